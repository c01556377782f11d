"""The shared fixed-point encoding: error within one step, unbiased rounding, headroom checked up front."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.errors import ConfigError
from privfed.secure.encoding import FixedPointEncoding


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 20), st.integers(2, 30), st.floats(1e-3, 100), st.integers(0, 2**32 - 1),
       st.integers(1, 60))
def test_sum_decodes_within_one_step_per_client(n, value_bits, clip_range, seed, d):
    enc = FixedPointEncoding.for_clients(clip_range, value_bits, n)
    rng = np.random.default_rng(seed)
    vectors = [rng.normal(0, clip_range, d) for _ in range(n)]  # some beyond the range: clipped
    total = np.zeros(d, dtype=enc.dtype)
    for v in vectors:
        words, stats = enc.encode(v)
        assert stats.max_error <= enc.step * (1 + 1e-9)
        total += words
    exact = sum(np.clip(v, -clip_range, clip_range) for v in vectors)
    assert np.all(np.abs(enc.decode_sum(total) - exact) <= n * enc.step * (1 + 1e-9) + 1e-9 * n * clip_range)


def test_extremes_never_wrap():
    enc = FixedPointEncoding.for_clients(1.0, 20, 16)
    total = np.zeros(3, dtype=enc.dtype)
    for _ in range(16):
        total += enc.encode(np.array([1e9, -1e9, 1.0]))[0]
    np.testing.assert_allclose(enc.decode_sum(total), [16.0, -16.0, 16.0], rtol=1e-6)


def test_stochastic_rounding_is_unbiased():
    enc = FixedPointEncoding(clip_range=1.0, value_bits=4, word_bits=32)  # step 1/7: coarse on purpose
    x = np.full(200_000, 0.3)
    mean = enc.decode_sum(enc.encode(x)[0]).mean()
    assert abs(mean - 0.3) < 4 * enc.step / math.sqrt(x.size)


def test_clip_count_and_error_are_reported():
    enc = FixedPointEncoding(clip_range=0.5, value_bits=12, word_bits=32)
    _, stats = enc.encode(np.array([0.1, 0.7, -2.0, 0.49]))
    assert stats.clipped == 2 and stats.values == 4
    assert 0 <= stats.rms_error <= stats.max_error <= enc.step


def test_word_size_follows_the_headroom_rule():
    assert FixedPointEncoding.for_clients(1.0, 20, 4096).word_bits == 32  # 20 + 12 = 32
    assert FixedPointEncoding.for_clients(1.0, 20, 4097).word_bits == 64
    assert FixedPointEncoding.for_clients(1.0, 30, 10).word_bits == 64
    with pytest.raises(ConfigError, match="more than a 64-bit word"):
        FixedPointEncoding.for_clients(1.0, 53, 5000)  # 52 + 1 + 13 = 66 bits
    with pytest.raises(ConfigError, match=r"\[2, 53\]"):
        FixedPointEncoding.for_clients(1.0, 60, 2)


def test_the_largest_allowed_configuration_sums_without_wrapping():
    enc = FixedPointEncoding.for_clients(1.0, 53, 2048)  # 52 + 1 + 11 = 64: exactly at the headroom limit
    assert enc.word_bits == 64
    words, _ = enc.encode(np.array([1.0, -1.0, 1e300]))
    total = words * np.uint64(2048)  # 2048 clients sending the extremes, mod 2^64
    np.testing.assert_allclose(enc.decode_sum(total), [2048.0, -2048.0, 2048.0], rtol=1e-12)
    with pytest.raises(ConfigError, match="noise"):
        FixedPointEncoding.for_clients(1.0, 40, 1000, extra_bound=2.0 ** 60)


def test_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        FixedPointEncoding(1.0, 8, 32).encode(np.array([np.nan]))
