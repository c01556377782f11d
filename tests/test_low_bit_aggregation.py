"""Few bits on the wire: k-bit packing, the randomized Hadamard rotation, and secagg sums at k < 32 that stay
exact, shrink the upload, refuse what cannot fit, and keep the clients' weights intact."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import privfed
from privfed.config import Aggregation, AggregationConfig
from privfed.errors import ConfigError
from privfed.secure.encoding import FixedPointEncoding
from privfed.secure.rotation import RandomizedHadamard, padded_length, walsh_hadamard
from privfed.secure.wire import container_dtype, pack, packed_size, unpack
from privfed.privacy.distributed import DistributedDp


@settings(max_examples=80, deadline=None)
@given(st.integers(4, 64), st.integers(1, 300), st.integers(0, 2 ** 32))
def test_packing_round_trips_k_bits_a_value(word_bits, length, seed):
    words = np.random.default_rng(seed).integers(0, 2 ** 64 - 1, length, dtype=np.uint64, endpoint=True)
    words = words.astype(container_dtype(word_bits))  # high bits beyond k are set: pack must drop them
    raw = pack(words, word_bits)
    assert len(raw) == packed_size(length, word_bits) == -(-length * word_bits // 8)
    expected = [int(w) % (1 << word_bits) for w in words]
    assert [int(w) for w in unpack(raw, word_bits, length)] == expected
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(raw + b"\0", word_bits, length)


@pytest.mark.parametrize("m", [1, 2, 8, 64, 512])
def test_walsh_hadamard_matches_scipy(m):
    x = np.random.default_rng(m).normal(size=m)
    np.testing.assert_allclose(walsh_hadamard(x), scipy.linalg.hadamard(m) @ x, atol=1e-9)


def test_rotation_is_orthogonal_invertible_and_flattens_a_spike():
    rotation = RandomizedHadamard(5000, b"session")
    assert rotation.padded == padded_length(5000) == 8192
    spike = np.zeros(5000)
    spike[17] = 3.0
    rotated = rotation.rotate(spike)
    assert np.linalg.norm(rotated) == pytest.approx(3.0)
    assert np.abs(rotated).max() == pytest.approx(3.0 / np.sqrt(8192))  # one spike spreads evenly
    x = np.random.default_rng(1).normal(size=5000)
    np.testing.assert_allclose(rotation.unrotate(rotation.rotate(x)), x, atol=1e-9)
    other = RandomizedHadamard(5000, b"another session")
    assert not np.allclose(other.rotate(x), rotation.rotate(x))  # the signs come from the session


def _contributions(n: int, d: int, scale: float = 0.01) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {c: np.append(rng.normal(0, scale, d - 1), 0.4 + 0.1 * c) for c in range(n)}


def _aggregate(n: int, d: int, contributions: dict, **aggregation):
    backend = privfed.make_aggregator(AggregationConfig(method=Aggregation.SECAGG, **aggregation),
                                      num_clients=n, vector_length=d)
    return backend, backend.aggregate(1, contributions, frozenset())


@pytest.mark.parametrize(("word_bits", "rotation"), [(16, False), (8, False), (8, True), (6, True)])
def test_low_bit_secure_sum_is_the_sum_within_the_quantisation_and_shrinks_the_upload(word_bits, rotation):
    n, d = 5, 3001
    values = _contributions(n, d)
    truth = sum(values.values())
    wide, full = _aggregate(n, d, values)  # automatic: 32-bit words, 20 value bits
    narrow, low = _aggregate(n, d, values, word_bits=word_bits, clip_range=0.05, rotation=rotation)
    assert narrow.encoding.word_bits == word_bits
    assert narrow.encoding.value_bits == word_bits - 3  # ceil(log2 5) bits of headroom for the exact sum
    # stochastic rounding is unbiased: the error is a few steps' worth over n clients, nowhere near the signal
    step = narrow.encoding.step
    error = low.total[:-1] - truth[:-1]
    assert np.sqrt(np.mean(error ** 2)) < step * np.sqrt(n)
    levels = 2 ** (narrow.encoding.value_bits - 1) - 1  # weights arrive exactly, rounded to the grid
    assert low.total[-1] == pytest.approx(sum(round(v[-1] * levels) / levels for v in values.values()), abs=1e-12)
    wire = narrow.wire_length
    assert wire == (padded_length(d - 1) + 1 if rotation else d)
    masked_bytes = packed_size(wire, word_bits)
    overhead = full.bytes_up_per_client - packed_size(d, 32)  # keys, shares and framing: the same at any k
    assert low.bytes_up_per_client == pytest.approx(masked_bytes + overhead, rel=0.02)
    if not rotation:  # the masked vector itself: exactly k/32 of the 32-bit one
        assert masked_bytes == pytest.approx(packed_size(d, 32) * word_bits / 32, abs=1)


def test_a_clip_range_below_one_keeps_the_weights():
    """The weight (last value, in [0, 1]) travels in clip-range units: a small clip range used to clip it."""
    values = _contributions(4, 101)
    _, outcome = _aggregate(4, 101, values, clip_range=0.05)
    assert outcome.total[-1] == pytest.approx(sum(v[-1] for v in values.values()), abs=1e-4)


def test_bit_widths_that_cannot_hold_the_exact_sum_are_refused_with_the_number():
    with pytest.raises(ConfigError, match=r"aggregation.word_bits.*4 bits cannot hold the exact sum of 5 clients'"
                                          r" values: even 2-bit values need 5"):
        FixedPointEncoding.for_clients(1.0, 0, 5, word_bits=4)
    with pytest.raises(ConfigError, match=r"aggregation.word_bits.*8 bits cannot hold the exact sum of 5 clients' "
                                          r"12-bit values \(needs 15\)"):
        FixedPointEncoding.for_clients(1.0, 12, 5, word_bits=8)
    assert FixedPointEncoding.for_clients(1.0, 0, 5) == FixedPointEncoding(1.0, 20, 32)  # today's default, unchanged
    assert FixedPointEncoding.for_clients(1.0, 0, 5, word_bits=5).value_bits == 2


@pytest.mark.parametrize(("overrides", "message"), [
    (("aggregation=secagg", "aggregation.word_bits=3"), r"aggregation.word_bits.*\[4, 64\], got 3"),
    (("aggregation=secagg", "aggregation.word_bits=65"), r"aggregation.word_bits.*got 65"),
    (("aggregation=paillier", "aggregation.word_bits=8"), r"aggregation.word_bits.*secagg only"),
    (("aggregation=plain", "aggregation.rotation=true"), r"aggregation.rotation.*secagg only, not plain"),
    (("aggregation=secagg", "aggregation.rotation=true", "defence.range_check=true"),
     r"aggregation.rotation.*defence.range_check"),
    (("aggregation=secagg", "aggregation.rotation=true", "attack=out_of_range"), r"attack.kind.*unrotated"),
])
def test_bad_wire_settings_name_the_key(tiny_classifier, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_classifier(*overrides)


# ---------------------------------------------------------------- the server's batched Shamir recovery


def test_vectorised_field_product_matches_pycryptodome():
    from Crypto.Protocol.SecretSharing import _Element

    from privfed.secure.shamir import _from_limbs, _to_limbs, multiply_constant

    rng = np.random.default_rng(3)
    values = [rng.bytes(16) for _ in range(64)] + [b"\xff" * 16, bytes(16)]
    for constant in (1, 2, 0x87, (1 << 127) | 1, int.from_bytes(rng.bytes(16), "big")):
        expected = [(_Element(v) * _Element(constant)).encode() for v in values]
        assert _from_limbs(multiply_constant(_to_limbs(values), constant)) == expected


def test_batched_recovery_equals_pycryptodome_for_any_share_subsets():
    from Crypto.Protocol.SecretSharing import Shamir

    from privfed.secure.primitives import split_secret
    from privfed.secure.shamir import combine_many

    rng = np.random.default_rng(5)
    secrets = {owner: rng.bytes(32) for owner in range(40)}
    shares = {owner: split_secret(secret, 5, 9) for owner, secret in secrets.items()}
    picked = {owner: [s[i] for i in sorted(rng.choice(9, int(rng.integers(5, 10)), replace=False))]
              for owner, s in shares.items()}  # many different index sets, some more than t shares
    assert combine_many(picked, 5) == secrets
    owner = 3  # the reference: pycryptodome's own combine of each half
    first = picked[owner][:5]
    assert Shamir.combine([(i, s[:16]) for i, s in first]) + Shamir.combine([(i, s[16:]) for i, s in first]) \
        == secrets[owner]
    with pytest.raises(ValueError, match="fewer than 5 shares"):
        combine_many({0: shares[0][:4]}, 5)
    assert combine_many({7: [(2, secrets[7])]}, 1) == {7: secrets[7]}


@pytest.mark.parametrize("word_bits", [5, 8, 31, 33, 63])
def test_sums_decode_as_signed_k_bit_numbers_at_any_k(word_bits):
    enc = FixedPointEncoding(1.0, 2, word_bits)
    top = (1 << (word_bits - 1)) - 1
    ints = np.array([-top - 1, -top, -1, 0, 1, top], dtype=np.int64)  # the whole signed range of k bits
    np.testing.assert_array_equal(enc.decode_sum(enc.to_words(ints)), ints * enc.step)


def test_weights_arrive_exact_and_the_weighted_mean_unbiased_at_few_bits():
    """At 5-bit words for 4 clients (3-bit values, L = 3 levels) a weight of 0.4 rounds to 1/3, deterministically,
    and the client's update is rescaled to match: the decoded mean is the mean under the rounded weights."""
    values = _contributions(4, 2001)  # weights 0.4, 0.5, 0.6, 0.7
    backend, outcome = _aggregate(4, 2001, values, word_bits=5, clip_range=0.05)
    levels = 2 ** (backend.encoding.value_bits - 1) - 1
    rounded = {c: max(1, round(v[-1] * levels)) / levels for c, v in values.items()}
    assert levels == 3 and outcome.total[-1] == pytest.approx(sum(rounded.values()), abs=1e-12)
    updates = {c: v[:-1] / v[-1] for c, v in values.items()}
    expected = sum(rounded[c] * updates[c] for c in values) / sum(rounded.values())
    found = outcome.total[:-1] / outcome.total[-1]
    assert abs(np.mean(found - expected)) < 0.1 * backend.encoding.step  # unbiased: errors average out
    assert np.corrcoef(found, expected)[0, 1] > 0.3


def test_distributed_noise_picks_the_finest_value_bits_whose_noisy_sum_rarely_wraps():
    """The chosen value bits keep the round's wrap probability (Chernoff, union over values) within the bound;
    one bit more would not."""
    from privfed.aggregation.secagg import SecAggBackend
    from privfed.privacy.distributed import wrap_probability

    def wrap_chance(backend, value_bits, word_bits, clients=5):
        share = backend.noise_share(clients, FixedPointEncoding(0.1, value_bits, word_bits).step)
        headroom = 2 ** (word_bits - 1) - 1 - clients * (2 ** (value_bits - 1) - 1)
        return wrap_probability(clients * share.client_mu, headroom, 100), share.client_mu

    for word_bits in (12, 16, 32):
        backend = SecAggBackend(AggregationConfig(method=Aggregation.SECAGG, word_bits=word_bits, clip_range=0.1),
                                5, 101, distributed=DistributedDp(1.0, 0.1))
        enc = backend.encoding
        chance = backend.server_half(1, list(range(5))).details["wrap_probability"]
        assert chance == wrap_chance(backend, enc.value_bits, word_bits)[0] <= 1e-9
        finer, mu = wrap_chance(backend, enc.value_bits + 1, word_bits)
        assert finer > 1e-9 or mu > 1e18, (word_bits, enc.value_bits)
    with pytest.raises(ConfigError, match=r"aggregation.word_bits: at 6 bits .* wraps around with probability "
                                          r"[0-9.e-]+ a round .*max_wrap_probability=1e-09"):
        SecAggBackend(AggregationConfig(method=Aggregation.SECAGG, word_bits=6, clip_range=0.1), 5, 101,
                      distributed=DistributedDp(1.0, 0.1))


def test_rotation_signs_are_fixed_by_the_session_alone():
    """Clients and server derive the signs independently (SHAKE-256 of the session id): pinned here, so a change
    that would make two versions disagree fails."""
    signs = RandomizedHadamard(8, b"\x00" * 16).signs()
    assert signs.tolist() == RandomizedHadamard(5, b"\x00" * 16).signs().tolist()  # 5 values pad to 8
    import hashlib

    first = hashlib.shake_256(b"privfed-rotation|" + b"\x00" * 16).digest(1)[0]
    assert signs.tolist() == [1.0 - 2.0 * ((first >> i) & 1) for i in range(8)]
