"""A run killed after a checkpoint resumes with ``--resume`` and ends exactly where an uninterrupted run ends."""
import numpy as np
import pytest

import privfed
from privfed.results import CHECKPOINT, RunDirectory


class DieInRound(privfed.Callback):
    """Kills the run while round ``r`` is being measured, after round ``r - 1`` was checkpointed."""

    def __init__(self, r: int):
        self.r = r
        self.failed: list[BaseException] = []

    def on_round_end(self, record, state):
        if record.round == self.r:
            raise KeyboardInterrupt

    def on_run_failed(self, error):
        self.failed.append(error)


def test_resume_after_interrupt_matches_uninterrupted_run(tiny_classifier, tmp_path):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=target_epsilon", "privacy.epsilon=4",
                          "training.rounds=3", "federation.client_fraction=0.67", "federation.strategy=fedadam",
                          "federation.server_lr=0.05")
    reference = privfed.run(cfg, tmp_path / "reference", progress=False)

    killer = DieInRound(2)
    with pytest.raises(KeyboardInterrupt):
        privfed.run(cfg, tmp_path / "killed", progress=False, callbacks=[killer])
    assert [type(e) for e in killer.failed] == [KeyboardInterrupt]  # every callback hears why the run stopped
    assert not (tmp_path / "killed" / "results.json").exists()
    assert (tmp_path / "killed" / "metrics.csv").read_text().count("\n") == 2  # header + round 1

    resumed = privfed.resume(tmp_path / "killed", progress=False)
    assert len(resumed["rounds"]) == 3
    for a, b in zip(reference["rounds"], resumed["rounds"]):
        for key in ("train_loss", "eval_loss", "eval_accuracy", "epsilon", "clients_trained"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert [c["steps"] for c in reference["privacy"]["clients"]] == \
        [c["steps"] for c in resumed["privacy"]["clients"]]
    assert (tmp_path / "killed" / "ledger.jsonl").read_text() == (tmp_path / "reference" / "ledger.jsonl").read_text()


def test_checkpoint_is_plain_data(tiny_classifier, tmp_path):
    """The checkpoint loads without pickle (no code runs on load), holds the fedadam moments as arrays, and gives
    back the rounds (epsilon = inf without DP), notes and ledger exactly."""
    cfg = tiny_classifier("model.regime=lora", "training.rounds=1", "federation.strategy=fedadam")
    res = privfed.run(cfg, tmp_path / "r", progress=False)
    with np.load(tmp_path / "r" / CHECKPOINT, allow_pickle=False) as archive:
        assert {"global_vector", "meta", "strategy.m", "strategy.v"} <= set(archive.files)
    state = RunDirectory(tmp_path / "r").load_checkpoint()
    assert state.completed_rounds == 1 and state.strategy_state["m"].shape == state.global_vector.shape
    assert state.rows == res["rounds"] and state.rows[0]["epsilon"] == float("inf")
    assert state.notes == res["notes"] and state.initial == res["initial"]
    assert state.ledger.to_jsonl() == (tmp_path / "r" / "ledger.jsonl").read_text()


def test_a_pre_0_2_pickle_checkpoint_is_refused_not_unpickled(tmp_path):
    (tmp_path / "checkpoint.pkl").write_bytes(b"not even a pickle")
    with pytest.raises(privfed.ConfigError, match="--overwrite"):
        RunDirectory(tmp_path).load_checkpoint()


def test_same_seed_same_result_and_no_accidental_overwrite(tiny_classifier, tmp_path):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "training.rounds=1")
    a = privfed.run(cfg, tmp_path / "a", progress=False)
    with pytest.raises(privfed.ConfigError, match="already holds a privfed run"):
        privfed.run(cfg, tmp_path / "a", progress=False)
    b = privfed.run(cfg, tmp_path / "a", overwrite=True, progress=False)
    assert a["rounds"][0]["eval_loss"] == b["rounds"][0]["eval_loss"]
