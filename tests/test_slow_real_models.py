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
