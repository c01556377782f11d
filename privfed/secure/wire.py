"""Words of Z_2^k on the wire: k bits a value, packed, for any k from 4 to 64.

Secure aggregation works modulo 2^k. In memory a word lives in the smallest numpy container that holds it
(uint32 for k <= 32, uint64 above) and arithmetic runs modulo the container's 2^32 or 2^64; because 2^k divides
that modulus, reducing modulo 2^k at the end gives the same result as reducing after every step. Only what crosses
the wire is reduced and bit-packed: ``ceil(length * k / 8)`` bytes, not 4 or 8 bytes a value. At k = 32 and 64
packing is the container's raw bytes, so those word sizes are byte-identical to privfed <= 0.7's wire format.
"""
from __future__ import annotations

import numpy as np

MIN_WORD_BITS, MAX_WORD_BITS = 4, 64


def container_dtype(word_bits: int) -> type[np.unsignedinteger]:
    """The numpy type a k-bit word lives in: uint32 up to 32 bits, uint64 up to 64."""
    if not MIN_WORD_BITS <= word_bits <= MAX_WORD_BITS:
        raise ValueError(f"word_bits must be in [{MIN_WORD_BITS}, {MAX_WORD_BITS}], got {word_bits}")
    return np.uint32 if word_bits <= 32 else np.uint64


def reduce(words: np.ndarray, word_bits: int) -> np.ndarray:
    """``words`` modulo 2^k, in place where the container is wider than k; returns the array."""
    width = words.dtype.itemsize * 8
    if word_bits < width:
        np.bitwise_and(words, words.dtype.type((1 << word_bits) - 1), out=words)
    return words


def packed_size(length: int, word_bits: int) -> int:
    """Bytes that ``length`` k-bit words take on the wire."""
    return (length * word_bits + 7) // 8


def pack(words: np.ndarray, word_bits: int) -> bytes:
    """k-bit words (in their container; reduced modulo 2^k here) -> ``packed_size`` bytes, little-endian bits."""
    dtype = container_dtype(word_bits)
    words = reduce(np.ascontiguousarray(words, dtype=dtype).copy(), word_bits)
    width = np.dtype(dtype).itemsize * 8
    if word_bits == width:
        return words.astype(f"<u{width // 8}", copy=False).tobytes()
    if word_bits in (8, 16):
        return words.astype(f"<u{word_bits // 8}").tobytes()
    bits = np.unpackbits(words.astype(f"<u{width // 8}", copy=False).view(np.uint8), bitorder="little")
    return np.packbits(bits.reshape(-1, width)[:, :word_bits], bitorder="little").tobytes()


def unpack(raw: bytes, word_bits: int, length: int) -> np.ndarray:
    """The inverse of :func:`pack`: ``length`` words in their container. ValueError if the size is wrong."""
    dtype = container_dtype(word_bits)
    if len(raw) != packed_size(length, word_bits):
        raise ValueError(f"{len(raw)} bytes cannot hold {length} words of {word_bits} bits "
                         f"({packed_size(length, word_bits)} expected)")
    width = np.dtype(dtype).itemsize * 8
    if word_bits == width:
        return np.frombuffer(raw, dtype=f"<u{width // 8}").astype(dtype)
    if word_bits in (8, 16):
        return np.frombuffer(raw, dtype=f"<u{word_bits // 8}").astype(dtype)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=length * word_bits, bitorder="little")
    wide = np.zeros((length, width), dtype=np.uint8)
    wide[:, :word_bits] = bits.reshape(length, word_bits)
    return np.packbits(wide, axis=1, bitorder="little").reshape(-1).view(f"<u{width // 8}").astype(dtype)
