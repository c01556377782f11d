"""Building blocks for the SecAgg tests: a whole round over random words, driven through bytes."""
from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfed.config import DropoutStage
from privfed.secure.graph import effective_degree, round_threshold
from privfed.secure.secagg import RoundParameters, SecAggClient, SecAggServer
from privfed.secure.simulate import run_round


def make_round(n: int, d: int, *, degree: int = 0, fraction: float = 0.6, word_bits: int = 32,
               consistency: bool = False, seed: int = 0, inputs: dict | None = None):
    """Server and clients of one round over random (or given) words; returns (server, clients, inputs)."""
    session = hashlib.sha256(b"test-session-%d" % seed).digest()[:16]  # fixed per seed: reproducible graphs
    ids = list(range(n))
    dtype = np.uint32 if word_bits == 32 else np.uint64
    rng = np.random.default_rng(seed)
    if inputs is None:
        inputs = {c: rng.integers(0, np.iinfo(dtype).max, d, dtype=dtype, endpoint=True) for c in ids}
    identities = {c: Ed25519PrivateKey.generate() for c in ids} if consistency else {}
    directory = {c: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                 for c, k in identities.items()}
    params = RoundParameters(session, 1, tuple(ids), effective_degree(n, degree), round_threshold(n, degree, fraction),
                             word_bits, d, consistency)
    clients = {c: SecAggClient(c, inputs[c], session, 1, identities.get(c), directory) for c in ids}
    return SecAggServer(params), clients, inputs


def plain_sum(inputs: dict, members, word_bits: int = 32) -> np.ndarray:
    modulus = 1 << word_bits
    total = np.zeros(next(iter(inputs.values())).size, dtype=object)
    for c in members:
        total = (total + inputs[c].astype(object)) % modulus
    return total.astype(np.uint64)


def run(server, clients, dropouts: dict[int, DropoutStage] | None = None):
    return run_round(server, clients, dropouts)
