"""The cryptographic building blocks of SecAgg, each a thin wrapper over a well-kept library.

Nothing here is a cipher, a KDF or a random generator of our own: key agreement is X25519, key derivation
HKDF-SHA256, authenticated encryption AES-256-GCM and mask expansion AES-256-CTR (all from ``cryptography``);
Shamir secret sharing is pycryptodome's (over GF(2^128); the server recovers many secrets at once with
:mod:`privfed.secure.shamir`); fresh secrets come from the OS CSPRNG. What the wrappers
add is *domain separation*: every derived key binds the session, the round and the ordered pair of clients, so a key
or a mask can never be replayed into another round, session or pair.
"""
from __future__ import annotations

import os
import struct

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfed.secure.wire import container_dtype, reduce

SEED_BYTES = 32  # self-mask seeds and derived pairwise seeds: 256 bits
PUBLIC_KEY_BYTES = 32
_ZERO_NONCE = bytes(16)  # every AES-CTR key below is a fresh, single-use derived key, so a fixed IV is safe


class KeyAgreementError(ValueError):
    """An X25519 agreement failed: the peer's public key is invalid (e.g. a low-order point)."""


class DecryptionError(Exception):
    """A ciphertext failed authentication: tampered, misrouted, or for another session/round/pair."""


def fresh_secret(num_bytes: int = SEED_BYTES) -> bytes:
    return os.urandom(num_bytes)


def new_key_pair() -> tuple[X25519PrivateKey, bytes]:
    private = X25519PrivateKey.generate()
    return private, public_bytes(private)


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _context(label: bytes, session: bytes, round_idx: int, a: int, b: int) -> bytes:
    return label + b"|" + session + struct.pack(">qqq", round_idx, a, b)


def derive_key(private: X25519PrivateKey, peer_public: bytes, label: bytes, session: bytes, round_idx: int,
               low: int, high: int) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public)) bound to (label, session, round, low, high)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:
        raise KeyAgreementError(f"key agreement failed: {err}") from None
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None,
                info=_context(label, session, round_idx, low, high)).derive(shared)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: a random 96-bit nonce, prepended to the ciphertext; ``associated`` is authenticated."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < 12 + 16:
        raise DecryptionError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag:
        raise DecryptionError("authentication failed") from None


class MaskStream:
    """Expands 256-bit seeds into masks of Z_2^k: the AES-256-CTR keystream under key = seed, read as words of the
    container (uint32 or uint64); modulo 2^k for k below the container's width, a uniform word stays uniform.

    Uniformity follows from AES being a pseudorandom permutation (the basis of NIST's CTR_DRBG). OpenSSL writes the
    keystream straight into a scratch buffer that is reused across calls, and the all-zero plaintext is allocated
    once, so masking a vector costs the cipher plus one vector add, nothing else (see benchmarks/secagg.py).
    """

    def __init__(self) -> None:
        self._zeros = b""
        self._scratch = np.empty(0, dtype=np.uint8)

    def _keystream(self, seed: bytes, nbytes: int) -> np.ndarray:
        if len(self._zeros) < nbytes:
            self._zeros = bytes(nbytes)
        if self._scratch.size < nbytes + 15:  # update_into wants one block of spare room
            self._scratch = np.empty(nbytes + 15, dtype=np.uint8)
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
        encryptor.update_into(memoryview(self._zeros)[:nbytes], self._scratch)
        return self._scratch[:nbytes]

    def add(self, target: np.ndarray, seed: bytes, subtract: bool = False) -> None:
        """target += mask(seed) (or -=), in place, modulo 2^k where k is target's word size."""
        mask = self._keystream(seed, target.nbytes).view(target.dtype)
        if subtract:
            np.subtract(target, mask, out=target)
        else:
            np.add(target, mask, out=target)

    def mask(self, seed: bytes, length: int, word_bits: int) -> np.ndarray:
        """A new array holding ``length`` mask words of Z_2^k (in their container)."""
        dtype = container_dtype(word_bits)
        return reduce(self._keystream(seed, length * np.dtype(dtype).itemsize).view(dtype).copy(), word_bits)


def split_secret(secret: bytes, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """Shamir-share a 32-byte secret into ``holders`` shares, any ``threshold`` of which recover it.

    pycryptodome shares 16-byte secrets over GF(2^128); a 32-byte secret is shared as its two halves at the same
    points, and a share is (index, 32 bytes). Indices run 1..holders.
    """
    if len(secret) != SEED_BYTES:
        raise ValueError(f"secrets are {SEED_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise ValueError(f"need 1 <= threshold <= holders, got {threshold} of {holders}")
    if threshold == 1:  # pycryptodome needs k >= 2; a degree-0 polynomial is the secret itself
        return [(i, secret) for i in range(1, holders + 1)]
    low = Shamir.split(threshold, holders, secret[:16])
    high = Shamir.split(threshold, holders, secret[16:])
    return [(i, a + b) for (i, a), (_, b) in zip(low, high, strict=True)]
