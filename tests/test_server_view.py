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


def test_paillier_view_holds_ciphertexts_of_the_right_size():
    outcome, view = _round(privfed.Aggregation.PAILLIER, key_bits=2048, workers=1)
    assert view.kinds() == {"PAILLIER_INPUT": 4}
    for c in range(4):
        ciphertexts = view.uploads[c]
        assert len(ciphertexts) == outcome.details["ciphertexts_per_client"]
        assert all(int(x).bit_length() > 2048 for x in ciphertexts)  # elements of Z*_{n^2}, not small plaintexts
        assert view.bytes_from(c) > len(ciphertexts) * 512


def test_make_aggregator_checks_its_settings():
    with pytest.raises(privfed.ConfigError, match="aggregation.threshold"):
        privfed.make_aggregator(privfed.AggregationConfig(method=privfed.Aggregation.SECAGG, threshold=0.4),
                                num_clients=3, vector_length=10)
    with pytest.raises(privfed.ConfigError, match="num_clients"):
        privfed.make_aggregator(privfed.AggregationConfig(), num_clients=0, vector_length=10)
