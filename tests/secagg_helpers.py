"""Building blocks for the SecAgg tests: a whole round over random words, driven through bytes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfed.config import DropoutStage
from privfed.secure.graph import effective_degree, round_threshold
from privfed.secure.messages import ProtocolError
from privfed.secure.secagg import RoundParameters, SecAggClient, SecAggServer, ServerOutcome, ServerStage
from privfed.secure.wire import container_dtype

# the server stage (the reply it awaits) from which a client dropping at a given stage no longer answers
SILENT_FROM = {DropoutStage.ADVERTISE_KEYS: ServerStage.ADVERTISE_KEYS, DropoutStage.SHARE_KEYS: ServerStage.SHARE_KEYS,
               DropoutStage.MASKED_INPUT: ServerStage.MASKED_INPUT, DropoutStage.UNMASKING: ServerStage.UNMASK}
ORDER = list(ServerStage)


def make_round(n: int, d: int, *, degree: int = 0, fraction: float = 0.6, word_bits: int = 32,
               consistency: bool = False, seed: int = 0, inputs: dict | None = None):
    """Server and clients of one round over random (or given) words; returns (server, clients, inputs)."""
    session = hashlib.sha256(b"test-session-%d" % seed).digest()[:16]  # fixed per seed: reproducible graphs
    ids = list(range(n))
    dtype = container_dtype(word_bits)
    rng = np.random.default_rng(seed)
    if inputs is None:  # words of Z_2^k in their container
        top = (1 << word_bits) - 1
        inputs = {c: rng.integers(0, top, d, dtype=np.uint64, endpoint=True).astype(dtype) for c in ids}
    identities = {c: Ed25519PrivateKey.generate() for c in ids} if consistency else {}
    directory = {c: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                 for c, k in identities.items()}
    params = RoundParameters(session, 1, tuple(ids), effective_degree(n, degree), round_threshold(n, degree, fraction),
                             word_bits, d, consistency)
    clients = {c: SecAggClient(c, 1, identities.get(c), directory) for c in ids}
    for c in ids:
        clients[c].set_words(inputs[c])
    return SecAggServer(params), clients, inputs


def plain_sum(inputs: dict, members, word_bits: int = 32) -> np.ndarray:
    modulus = 1 << word_bits
    total = np.zeros(next(iter(inputs.values())).size, dtype=object)
    for c in members:
        total = (total + inputs[c].astype(object)) % modulus
    return total.astype(np.uint64)


@dataclass
class RoundLog:
    dropped: dict[int, str] = field(default_factory=dict)  # client -> why it left the round


def run(server: SecAggServer, clients: dict[int, SecAggClient],
        dropouts: dict[int, DropoutStage] | None = None) -> tuple[ServerOutcome, RoundLog]:
    """Route the bare state machines' bytes to the round's end; RoundAborted propagates."""
    dropouts = dropouts or {}
    log = RoundLog()
    outgoing = server.setup_messages()
    while outgoing:
        for cid, raw in outgoing.items():
            if cid in log.dropped:
                continue
            stage = dropouts.get(cid)
            if stage is not None and ORDER.index(server.stage) >= ORDER.index(SILENT_FROM[stage]):
                log.dropped[cid] = f"dropped before answering at {server.stage.name}"
                continue
            try:
                server.receive(cid, clients[cid].handle(raw))
            except ProtocolError as err:
                log.dropped[cid] = f"refused: {err}"
        outgoing = server.advance()
    return server.result(), log
