"""The randomized Hadamard rotation that flattens a vector before it is quantised to few bits.

A client's update has a few large coordinates and many small ones; quantised to b bits with one clip range, the
large ones are clipped or the small ones vanish into the rounding. Rotating by ``H D / sqrt(m)`` first — D a
diagonal of random signs, H the m x m Walsh–Hadamard matrix, m the length padded to a power of two — spreads the
vector's norm evenly: every rotated coordinate is sub-Gaussian with scale ``||x|| / sqrt(m)`` (Kairouz, Liu and
Steinke, ICML 2021, Sec. 4; Suresh et al., ICML 2017). The rotation is orthogonal, so L2 norms (and with them
DP sensitivities) are unchanged, and linear, so the server inverts it once on the sum of rotated vectors.

All clients of a round must use the same signs: they come from the round's session id, which every client gets
from SETUP and which is public (the signs are not a secret; a server that chose them badly could only cost
accuracy). No Hadamard routine in numpy or scipy is fast (``scipy.linalg.hadamard`` builds the dense matrix), so
the transform is the textbook in-place butterfly, O(m log m), tested against ``scipy.linalg.hadamard``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


def padded_length(length: int) -> int:
    """The power of two a vector of ``length`` values is padded to before rotation."""
    if length < 1:
        raise ValueError(f"cannot rotate an empty vector (length {length})")
    return 1 << (length - 1).bit_length()


def walsh_hadamard(vector: np.ndarray) -> np.ndarray:
    """``H @ vector`` (unnormalised, Sylvester order as scipy.linalg.hadamard) for a power-of-two length."""
    m = vector.size
    if m & (m - 1):
        raise ValueError(f"the Walsh–Hadamard transform needs a power-of-two length, got {m}")
    out = np.array(vector, dtype=np.float64)
    h = 1
    while h < m:
        pairs = out.reshape(-1, 2, h)
        upper = pairs[:, 0, :].copy()
        pairs[:, 0, :] += pairs[:, 1, :]
        pairs[:, 1, :] = upper - pairs[:, 1, :]
        h *= 2
    return out


@dataclass(frozen=True)
class RandomizedHadamard:
    """The rotation of ``length``-value vectors with the signs that ``seed`` (a round's session id) determines."""

    length: int
    seed: bytes

    @property
    def padded(self) -> int:
        return padded_length(self.length)

    def signs(self) -> np.ndarray:
        """±1 for each padded coordinate: the bits of SHAKE-256(label | seed), public randomness that every party
        derives identically whatever its numpy version."""
        stream = hashlib.shake_256(b"privfed-rotation|" + self.seed).digest((self.padded + 7) // 8)
        bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), count=self.padded, bitorder="little")
        return 1.0 - 2.0 * bits

    def rotate(self, vector: np.ndarray) -> np.ndarray:
        """``H D [vector, 0...] / sqrt(m)``: ``padded`` values."""
        if vector.shape != (self.length,):
            raise ValueError(f"expected {self.length} values to rotate, got shape {vector.shape}")
        padded = np.zeros(self.padded, dtype=np.float64)
        padded[:self.length] = vector
        return walsh_hadamard(padded * self.signs()) / math.sqrt(self.padded)

    def unrotate(self, rotated: np.ndarray) -> np.ndarray:
        """The inverse, ``D H y / sqrt(m)`` cut back to ``length`` values (the padding of a sum is ~0 + noise)."""
        if rotated.shape != (self.padded,):
            raise ValueError(f"expected {self.padded} rotated values, got shape {rotated.shape}")
        return (walsh_hadamard(rotated) * self.signs() / math.sqrt(self.padded))[:self.length]
