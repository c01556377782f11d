"""ServerView records what the server really received: plain updates, masked words, ciphertexts; via the public API."""
from __future__ import annotations

import numpy as np
import pytest

import privfed
from privfed.secure.encoding import FixedPointEncoding

VECTOR = 300


def _inputs(n: int = 4) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(3)
    return {c: np.clip(rng.normal(0.2 * c, 0.05, VECTOR), -1, 1) for c in range(n)}


def _round(method, dropouts=frozenset(), **settings):
    view = privfed.ServerView()
    cfg = privfed.AggregationConfig(method=method, **settings)
    with privfed.make_aggregator(cfg, num_clients=4, vector_length=VECTOR) as agg:
        outcome = agg.aggregate(1, _inputs(), frozenset(dropouts), view=view)
    return outcome, view


def test_plain_view_is_each_float32_update():
    outcome, view = _round(privfed.Aggregation.PLAIN)
    for c, x in _inputs().items():
        np.testing.assert_array_equal(view.uploads[c], x.astype(np.float32))
    assert view.kinds() == {"PLAIN_UPDATE": 4} and view.bytes_from(0) == VECTOR * 4
    np.testing.assert_allclose(outcome.total, sum(_inputs().values()), atol=1e-6)


def test_secagg_view_holds_masked_words_never_the_encoded_input():
    outcome, view = _round(privfed.Aggregation.SECAGG)
    encoding = FixedPointEncoding.for_clients(1.0, 20, 4)
    assert set(view.kinds()) == {"ADVERTISE_KEYS", "SHARE_KEYS", "MASKED_INPUT", "UNMASK_SHARES"}
    for c, x in _inputs().items():
        upload = view.uploads[c]
        assert upload.dtype == np.uint32 and upload.size == VECTOR
        plain_words = encoding.to_words(np.round(x / encoding.step).astype(np.int64))
        # a masked word equals the unmasked one with probability 2^-32 per value: all but a handful must differ
        assert np.count_nonzero(upload == plain_words) <= 2
        assert upload.max() > 2**31 and upload.min() < 2**31  # spread over the word, not near the input's values
    np.testing.assert_allclose(outcome.total, sum(_inputs().values()), atol=4 * encoding.step)


def test_secagg_view_shows_a_dropout_stopping_early():
    outcome, view = _round(privfed.Aggregation.SECAGG, {2}, dropout_stage=privfed.DropoutStage.MASKED_INPUT)
    assert 2 not in view.uploads and 2 not in outcome.contributors
    assert {m.kind for m in view.messages if m.sender == 2} == {"ADVERTISE_KEYS", "SHARE_KEYS"}
    assert view.bytes_from(0) - view.bytes_from(2) >= VECTOR * 4  # at least the masked vector it never sent


def test_paillier_view_holds_randomised_ciphertexts():
    view = privfed.ServerView()
    cfg = privfed.AggregationConfig(method=privfed.Aggregation.PAILLIER, key_bits=2048, workers=1)
    same = np.full(VECTOR, 0.25)
    with privfed.make_aggregator(cfg, num_clients=4, vector_length=VECTOR) as agg:
        outcome = agg.aggregate(1, {0: same, 1: same, 2: -same}, view=view)
        n = agg.key.n
    assert view.kinds() == {"PAILLIER_INPUT": 3, "PAILLIER_DECRYPTED": 1}  # + the decryptor's plaintext sum
    for c in range(3):
        ciphertexts = view.uploads[c]
        assert len(ciphertexts) == outcome.details["ciphertexts_per_client"]
        assert all(int(x) % n != 1 for x in ciphertexts)  # obfuscated: without r^n a ciphertext is 1 + m n
        assert view.bytes_from(c) > len(ciphertexts) * 512
    assert not set(map(int, view.uploads[0])) & set(map(int, view.uploads[1]))  # equal inputs, unrelated uploads
    np.testing.assert_allclose(outcome.total, 0.25 * np.ones(VECTOR), atol=3 * outcome.details["step"])


@pytest.mark.parametrize("method", list(privfed.Aggregation), ids=lambda m: m.value)
def test_every_back_end_refuses_what_it_was_not_sized_for(method):
    cfg = privfed.AggregationConfig(method=method, key_bits=2048, workers=1)
    with privfed.make_aggregator(cfg, num_clients=2, vector_length=5) as agg:
        with pytest.raises(ValueError, match="at most 2"):
            agg.aggregate(1, {c: np.zeros(5) for c in range(3)})
        with pytest.raises(ValueError, match=r"shape \(5,\)"):
            agg.aggregate(1, {0: np.zeros(5), 1: np.zeros(6)})
        with pytest.raises(ValueError, match="no contributions"):
            agg.aggregate(1, {})
        used = privfed.ServerView()
        agg.aggregate(1, {0: np.zeros(5), 1: np.zeros(5)}, view=used)
        with pytest.raises(ValueError, match="fresh ServerView"):
            agg.aggregate(2, {0: np.zeros(5), 1: np.zeros(5)}, view=used)


def test_make_aggregator_checks_its_settings():
    with pytest.raises(privfed.ConfigError, match="aggregation.threshold"):
        privfed.make_aggregator(privfed.AggregationConfig(method=privfed.Aggregation.SECAGG, threshold=0.4),
                                num_clients=3, vector_length=10)
    with pytest.raises(ValueError, match="num_clients"):
        privfed.make_aggregator(privfed.AggregationConfig(), num_clients=0, vector_length=10)
