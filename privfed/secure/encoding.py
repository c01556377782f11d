"""Fixed-point encoding of float vectors into Z_2^32 or Z_2^64, shared by every secure-aggregation back-end.

A value is clipped to [-R, R], divided by the step ``R / (2^(b-1) - 1)`` and stochastically rounded (up with
probability equal to the fractional part, using OS randomness, so the encoding is unbiased), then stored as a
two's-complement word. Sums of words wrap modulo 2^k; decoding reads the sum as a signed number.

Headroom rule, checked before any round starts: ``b + ceil(log2 n) <= k``. Each encoded value lies in
[-(2^(b-1) - 1), 2^(b-1) - 1], so the sum of n of them lies strictly inside the signed range of k bits and can
never wrap. The word is the smaller of 32 and 64 bits that satisfies the rule; a configuration that fits neither is
an error, not a silent overflow. Extra terms that are added in the integer domain (distributed-DP noise) need
headroom too: :meth:`FixedPointEncoding.for_clients` takes their bound.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privfed.errors import ConfigError
from privfed.secure.primitives import word_dtype

UniformSource = Callable[[int], np.ndarray]  # n -> n floats uniform in [0, 1)
MAX_VALUE_BITS = 53  # values pass through float64 on the way in: 53 bits is what it holds exactly


def os_uniform(count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) with 53 random bits each, from the OS CSPRNG (os.urandom)."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class EncodingStats:
    """What encoding cost one client's vector: how many values were clipped and the rounding error."""

    values: int
    clipped: int
    rms_error: float  # root mean square of (decoded - clipped input), from the stochastic rounding
    max_error: float


def summarise(stats: list[EncodingStats]) -> dict:
    """A round's encoding cost over its clients, as recorded in results.json."""
    return {"clipped_values": sum(s.clipped for s in stats),
            "quantisation_rms": float(np.sqrt(np.mean([s.rms_error ** 2 for s in stats]))),
            "quantisation_max": max(s.max_error for s in stats)}


@dataclass(frozen=True)
class FixedPointEncoding:
    clip_range: float  # R: values are clipped to [-R, R]
    value_bits: int  # b: signed magnitude levels 2^(b-1) - 1
    word_bits: int  # k: 32 or 64

    @property
    def step(self) -> float:
        return self.clip_range / (2 ** (self.value_bits - 1) - 1)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return word_dtype(self.word_bits)

    @classmethod
    def for_clients(cls, clip_range: float, value_bits: int, num_clients: int, extra_bound: float = 0.0,
                    key: str = "aggregation.value_bits") -> FixedPointEncoding:
        """The smallest word (32, else 64 bits) that holds the sum of ``num_clients`` encoded values.

        ``extra_bound`` is a bound, in steps, on integer terms each client adds after encoding (noise shares);
        it raises the per-client magnitude from 2^(b-1) - 1 to that plus the bound.
        """
        if not clip_range > 0 or not math.isfinite(clip_range):
            raise ConfigError("aggregation.clip_range", f"must be a finite number > 0, got {clip_range}")
        if not 2 <= value_bits <= MAX_VALUE_BITS:
            raise ConfigError(key, f"must be in [2, {MAX_VALUE_BITS}], got {value_bits}")
        if num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        per_client = (2 ** (value_bits - 1) - 1) + math.ceil(extra_bound)  # an exact integer
        needed = per_client.bit_length() + 1 + (num_clients - 1).bit_length()  # magnitude + sign + ceil(log2 n)
        for word_bits in (32, 64):
            if needed <= word_bits:
                return cls(clip_range, value_bits, word_bits)
        raise ConfigError(key, f"{value_bits} value bits for {num_clients} clients"
                          + (f" plus noise bounded by {math.ceil(extra_bound)} steps" if extra_bound else "")
                          + f" need {needed} bits, more than a 64-bit word; lower value_bits")

    def quantise(self, vector: np.ndarray, uniform: UniformSource = os_uniform) -> tuple[np.ndarray, EncodingStats]:
        """Clip and stochastically round to signed integers (int64) in units of ``step``."""
        x = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot encode a vector holding NaN or inf")
        clipped = np.clip(x, -self.clip_range, self.clip_range)
        scaled = clipped / self.step
        floor = np.floor(scaled)
        ints = (floor + (uniform(x.size) < (scaled - floor))).astype(np.int64)
        limit = 2 ** (self.value_bits - 1) - 1
        np.clip(ints, -limit, limit, out=ints)  # integer bounds: rounding up at exactly +R stays in range
        error = ints * self.step - clipped
        stats = EncodingStats(values=int(x.size), clipped=int(np.count_nonzero(clipped != x)),
                              rms_error=float(np.sqrt(np.mean(error ** 2))) if x.size else 0.0,
                              max_error=float(np.max(np.abs(error))) if x.size else 0.0)
        return ints, stats

    def to_words(self, ints: np.ndarray) -> np.ndarray:
        """Signed integers -> words of Z_2^k (two's complement; wraps by design)."""
        return ints.astype(np.int64).view(np.uint64).astype(self.dtype)

    def encode(self, vector: np.ndarray, uniform: UniformSource = os_uniform) -> tuple[np.ndarray, EncodingStats]:
        ints, stats = self.quantise(vector, uniform)
        return self.to_words(ints), stats

    def decode_sum(self, words: np.ndarray) -> np.ndarray:
        """A sum of encoded vectors (mod 2^k) -> the float sum, reading the words as signed numbers."""
        signed = words.astype(self.dtype).view(np.int32 if self.word_bits == 32 else np.int64)
        return signed.astype(np.float64) * self.step
