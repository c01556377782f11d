"""privfed.run and privfed.load_results return the same typed RunResult: ε a float before and after the round
trip through results.json (which writes "inf"), a DataFrame per round, a plot, compare() across runs; and the
package is typed (py.typed, every public name visible to type checkers)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import privfed


def test_run_and_load_results_give_the_same_typed_result(tiny_classifier, tmp_path):
    cfg = tiny_classifier("training.rounds=1", "model.regime=lora", "data.max_examples=90", "data.eval_examples=16",
                          "privacy.mode=target_epsilon", "privacy.epsilon=8")
    private = privfed.run(cfg, tmp_path / "dp", progress=False)
    loaded = privfed.load_results(tmp_path / "dp")
    for result in (private, loaded):
        assert isinstance(result, privfed.RunResult) and 0 < result.epsilon <= 8
        assert result.metric == "eval_accuracy" and 0 <= result.quality <= 1 and result.name == "tiny-bert"
        assert result.config == cfg and result.rounds[0]["round"] == 1
    assert loaded.quality == private.quality and loaded.epsilon == private.epsilon
    assert loaded["rounds"][0]["eval_loss"] == private["rounds"][0]["eval_loss"]
    # results.json writes a run without DP as "inf" (strict JSON); reading it gives the float back, outside the
    # config (kept in its own plain form) and text
    raw = json.loads((tmp_path / "dp" / "results.json").read_text())
    raw["final"]["epsilon"], raw["config"]["privacy"]["mode"], raw["notes"] = "inf", "off", ["nan"]
    (tmp_path / "no-dp").mkdir()
    (tmp_path / "no-dp" / "results.json").write_text(json.dumps(raw))
    no_dp = privfed.load_results(tmp_path / "no-dp")
    assert no_dp.epsilon == math.inf and no_dp["notes"] == ["nan"]
    frame = private.to_dataframe()
    assert list(frame.index) == [1] and frame.loc[1, "eval_accuracy"] == private["rounds"][0]["eval_accuracy"]
    assert frame.loc[1, "epsilon/client_0"] == private["rounds"][0]["client_epsilons"]["0"]
    private.plot(path=tmp_path / "rounds.png")
    assert (tmp_path / "rounds.png").stat().st_size > 0
    table = privfed.compare([private, no_dp, loaded], by="privacy.mode")
    assert list(table["privacy.mode"]) == ["off", "target_epsilon"]  # sorted by the value
    assert list(table["runs"]) == [1, 2] and table["eval_accuracy"].tolist() == [no_dp.quality, private.quality]
    with pytest.raises(KeyError, match="no config key 'privacy.nope'"):
        privfed.compare([private], by="privacy.nope")
    with pytest.raises(KeyError, match="'privacy' is a config section"):
        privfed.compare([private], by="privacy")


def test_the_package_is_typed_and_every_public_name_is_visible_to_type_checkers():
    root = Path(privfed.__file__).parent
    assert (root / "py.typed").is_file()
    source = (root / "__init__.py").read_text()
    declared = source.split("if TYPE_CHECKING:", 1)[1].split("_LAZY = ", 1)[0]
    assert all(f" {name}" in declared or f"{name}," in declared for name in privfed._LAZY), \
        "a lazy public name has no import under TYPE_CHECKING"
    assert all(hasattr(privfed, name) for name in privfed.__all__)
