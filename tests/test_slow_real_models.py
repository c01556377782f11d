"""Real-model runs (minutes on 2 cores): ``python3 -m pytest -m slow``."""
import math

import pytest

import privfed

pytestmark = pytest.mark.slow


def test_demo_reaches_085_accuracy_within_epsilon_8(tmp_path):
    res = privfed.run(privfed.load_config(), tmp_path, progress=False)
    assert res["final"]["epsilon"] <= 8.0
    assert res["final"]["eval_accuracy"] >= 0.85


def test_smollm2_converts_once_and_lora_lowers_perplexity(tmp_path):
    cfg = privfed.load_config("experiments/chatterbot_smollm2_lora.yaml",
                              ["training.rounds=1", "privacy.mode=off", "data.eval_examples=40"])
    res = privfed.run(cfg, tmp_path, progress=False)
    assert math.isfinite(res["final"]["eval_perplexity"])
    assert res["final"]["eval_perplexity"] < res["initial"]["eval_perplexity"]


def test_demo_under_secagg_with_30_percent_dropping_after_masking(tmp_path):
    cfg = privfed.load_config(overrides=["aggregation=secagg", "aggregation.dropout_fraction=0.3"])
    res = privfed.run(cfg, tmp_path, progress=False)
    assert not res["notes"]  # no round aborted
    for row in res["rounds"]:
        assert row["dropouts"] == 2 and row["clients_aggregated"] == 5  # their inputs still count
        assert row["aggregation"]["abort_reason"] is None
    assert res["final"]["eval_accuracy"] >= 0.85


def test_demo_under_paillier_with_its_3072_bit_default_key(tmp_path):
    res = privfed.run(privfed.load_config(overrides=["aggregation=paillier"]), tmp_path, progress=False)
    for row in res["rounds"]:
        details = row["aggregation"]
        assert details["key_bits"] == 3072 and details["slots_per_ciphertext"] == 3071 // 24
        assert row["clients_aggregated"] == 5 and details["abort_reason"] is None
        assert row["bytes_up_per_client"] < 2 * 4 * res["model"]["trainable_parameters"]
    assert res["final"]["eval_accuracy"] >= 0.85 and res["final"]["epsilon"] <= 8.0
