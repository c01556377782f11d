"""Fixed-point encoding of float vectors into words of Z_2^k (k from 4 to 64), shared by every secure-aggregation
back-end.

A value is clipped to [-R, R], divided by the step ``R / (2^(b-1) - 1)`` and stochastically rounded (up with
probability equal to the fractional part, using OS randomness, so the encoding is unbiased), then stored as a
two's-complement word of k bits. Sums of words wrap modulo 2^k; decoding reads the sum as a signed k-bit number.

Headroom rule, checked before any round starts: ``b + ceil(log2 n) <= k``. Each encoded value lies in
[-(2^(b-1) - 1), 2^(b-1) - 1], so the sum of n of them lies strictly inside the signed range of k bits and can
never wrap. ``aggregation.word_bits`` fixes k (4 to 64 bits on the wire); left at 0, k is the smaller of 32 and 64
that satisfies the rule. ``aggregation.value_bits`` fixes b; left at 0, b is 20 under an automatic word and the
most the rule allows under a fixed one. A configuration that breaks the rule is an error, not a silent overflow.
Extra terms that are added in the integer domain (distributed-DP noise) need headroom too:
:meth:`FixedPointEncoding.for_clients` takes their bound.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privfed.errors import ConfigError
from privfed.secure.wire import MAX_WORD_BITS, MIN_WORD_BITS, container_dtype, reduce

UniformSource = Callable[[int], np.ndarray]  # n -> n floats uniform in [0, 1)
MAX_VALUE_BITS = 53  # values pass through float64 on the way in: 53 bits is what it holds exactly
AUTOMATIC_WORD_VALUE_BITS = 20  # value_bits = 0 under word_bits = 0: privfed <= 0.7's default


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


def exact_sum_bits(value_bits: int, num_clients: int, extra_bound: float = 0.0) -> int:
    """Bits a word needs so that the sum of ``num_clients`` values of ``value_bits`` (plus integer terms bounded by
    ``extra_bound`` steps each) cannot wrap: magnitude + sign + ceil(log2 n)."""
    per_client = (2 ** (value_bits - 1) - 1) + math.ceil(extra_bound)  # an exact integer
    return per_client.bit_length() + 1 + (num_clients - 1).bit_length()


@dataclass(frozen=True)
class FixedPointEncoding:
    clip_range: float  # R: values are clipped to [-R, R]
    value_bits: int  # b: signed magnitude levels 2^(b-1) - 1
    word_bits: int  # k: the modulus 2^k of the sum, and the bits a value takes on the wire

    @property
    def step(self) -> float:
        return self.clip_range / (2 ** (self.value_bits - 1) - 1)

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return container_dtype(self.word_bits)

    @classmethod
    def for_clients(cls, clip_range: float, value_bits: int, num_clients: int, extra_bound: float = 0.0,
                    word_bits: int = 0) -> FixedPointEncoding:
        """The encoding whose k-bit sum of ``num_clients`` encoded values cannot wrap.

        ``word_bits`` 0 picks the smallest word (32, else 64 bits) that holds the sum; ``value_bits`` 0 picks 20
        bits under an automatic word and the most that fit a fixed one. ``extra_bound`` is a bound, in steps, on
        integer terms each client adds after encoding (noise shares); it raises the per-client magnitude from
        2^(b-1) - 1 to that plus the bound.
        """
        if not clip_range > 0 or not math.isfinite(clip_range):
            raise ConfigError("aggregation.clip_range", f"must be a finite number > 0, got {clip_range}")
        if value_bits != 0 and not 2 <= value_bits <= MAX_VALUE_BITS:
            raise ConfigError("aggregation.value_bits", f"must be 0 (automatic) or in [2, {MAX_VALUE_BITS}], got "
                              f"{value_bits}")
        if word_bits != 0 and not MIN_WORD_BITS <= word_bits <= MAX_WORD_BITS:
            raise ConfigError("aggregation.word_bits", f"must be 0 (automatic) or in [{MIN_WORD_BITS}, "
                              f"{MAX_WORD_BITS}], got {word_bits}")
        if num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        noise = f" plus noise bounded by {math.ceil(extra_bound)} steps" if extra_bound else ""
        if word_bits == 0:
            value_bits = value_bits or AUTOMATIC_WORD_VALUE_BITS
            needed = exact_sum_bits(value_bits, num_clients, extra_bound)
            for word in (32, 64):
                if needed <= word:
                    return cls(clip_range, value_bits, word)
            raise ConfigError("aggregation.value_bits", f"{value_bits} value bits for {num_clients} clients{noise} "
                              f"need {needed} bits, more than a 64-bit word; lower value_bits")
        if value_bits == 0:
            fitting = [b for b in range(2, MAX_VALUE_BITS + 1)
                       if exact_sum_bits(b, num_clients, extra_bound) <= word_bits]
            if not fitting:
                raise ConfigError("aggregation.word_bits", f"{word_bits} bits cannot hold the exact sum of "
                                  f"{num_clients} clients' values{noise}: even 2-bit values need "
                                  f"{exact_sum_bits(2, num_clients, extra_bound)}; raise word_bits")
            return cls(clip_range, fitting[-1], word_bits)
        needed = exact_sum_bits(value_bits, num_clients, extra_bound)
        if needed > word_bits:
            raise ConfigError("aggregation.word_bits", f"{word_bits} bits cannot hold the exact sum of {num_clients} "
                              f"clients' {value_bits}-bit values{noise} (needs {needed}); raise word_bits, lower "
                              "aggregation.value_bits, or set it to 0 (the most that fit)")
        return cls(clip_range, value_bits, word_bits)

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

    def quantise_contribution(self, vector: np.ndarray,
                              uniform: UniformSource = os_uniform) -> tuple[np.ndarray, EncodingStats]:
        """:meth:`quantise` for a contribution ``[w * update, w]``, whose last value is the client's weight.

        The weight travels in units of the clip range, so a clip range below 1 never clips it, and it is rounded
        to the grid deterministically, to w' = round(w L) / L for L = 2^(b-1) - 1 levels (clipped to [-1, 1]).
        A weight in (0, 1] — every training contribution — rounds to at least 1 / L, never 0, and the update is
        rescaled to w' * update: the sum then holds exact weights and the weighted mean stays unbiased at any bit
        width (stochastic rounding of the weight itself would make the mean's denominator noisy: at b = 4 a weight
        of 0.2 would arrive as 0 or 1/7)."""
        contribution = np.array(vector, dtype=np.float64)
        weight = float(contribution[-1])
        if not math.isfinite(weight):
            raise ValueError("cannot encode a vector holding NaN or inf")
        levels = 2 ** (self.value_bits - 1) - 1
        steps = int(np.clip(round(weight * levels), -levels, levels))
        if 0 < weight <= 1:
            steps = max(1, steps)
            contribution[:-1] *= (steps / levels) / weight
        ints, stats = self.quantise(contribution[:-1], uniform)
        return np.append(ints, np.int64(steps)), stats

    def decode_contribution_sum(self, total: np.ndarray) -> np.ndarray:
        """The float sum of contributions (decoded with :meth:`decode_sum`) with its total weight restored."""
        total = np.array(total, dtype=np.float64)
        total[-1] /= self.clip_range
        return total

    def to_words(self, ints: np.ndarray) -> np.ndarray:
        """Signed integers -> words of Z_2^k (two's complement; wraps by design), in their container."""
        return reduce(ints.astype(np.int64).view(np.uint64).astype(self.dtype), self.word_bits)

    def encode(self, vector: np.ndarray, uniform: UniformSource = os_uniform) -> tuple[np.ndarray, EncodingStats]:
        ints, stats = self.quantise(vector, uniform)
        return self.to_words(ints), stats

    def decode_sum(self, words: np.ndarray) -> np.ndarray:
        """A sum of encoded vectors (mod 2^k) -> the float sum, reading the words as signed numbers."""
        words = reduce(words.astype(self.dtype), self.word_bits)
        if self.word_bits in (32, 64):
            signed = words.view(np.int32 if self.word_bits == 32 else np.int64)
        else:  # move bit k-1 to the int64 sign bit, then shift back arithmetically: sign extension for any k
            spare = 64 - self.word_bits
            signed = (words.astype(np.uint64) << np.uint64(spare)).view(np.int64) >> np.int64(spare)
        return signed.astype(np.float64) * self.step
