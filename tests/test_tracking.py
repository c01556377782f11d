"""The trackers' life cycle without training (a full run is read back in test_cli): a failed or interrupted run is
marked so in MLflow, and a resumed run's TensorBoard log drops the steps it redoes."""
from __future__ import annotations

import numpy as np
import pytest

from privfed.observe.tracking import MlflowReporter, TensorBoardReporter, parse_trackers
from privfed.privacy.ledger import Ledger
from privfed.server.events import RoundRecord, RunStarted, RunState


def _started(completed: int, resumed: bool) -> RunStarted:
    return RunStarted(RunState(completed, np.zeros(2), {}, Ledger()), resumed, "", 3, 2)


def _round(reporter, state: RunState, r: int, accuracy: float) -> None:
    state.rows.append({"round": r, "eval_accuracy": accuracy, "epsilon": float("inf"), "eval_loss": float("nan")})
    reporter.on_round_committed(RoundRecord(r, 2, 0, 0.5, 10, 10, 1.0), state)


def test_an_mlflow_run_that_fails_or_is_interrupted_is_marked_so(tiny_classifier, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    statuses = []
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        reporter = MlflowReporter(tiny_classifier(), tracking_uri=uri, experiment="t")
        started = _started(0, False)
        reporter.on_run_start(started)
        _round(reporter, started.state, 1, 0.5)
        reporter.on_run_failed(error)
        run = MlflowClient(uri).get_run(reporter.run_id)
        statuses.append(run.info.status)
        assert run.data.metrics == {"eval_accuracy": 0.5}  # inf and nan are left out: MLflow refuses them
    assert statuses == ["FAILED", "KILLED"]


def test_a_resumed_tensorboard_log_drops_the_steps_it_redoes(tiny_classifier, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_classifier()
    first = TensorBoardReporter(cfg, tmp_path)
    started = _started(0, False)
    first.on_run_start(started)
    for r, accuracy in ((1, 0.1), (2, 0.2), (3, 0.3)):  # round 3 logged, then killed before its checkpoint
        _round(first, started.state, r, accuracy)
    first.on_run_failed(KeyboardInterrupt())
    resumed = TensorBoardReporter(cfg, tmp_path)
    again = _started(2, True)
    resumed.on_run_start(again)
    _round(resumed, again.state, 3, 0.35)
    resumed.on_run_end({})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("eval_accuracy")] == [(1, 0.1), (2, 0.2), (3, 0.35)]


def test_unknown_trackers_are_refused():
    from privfed.errors import ConfigError

    assert parse_trackers("TensorBoard, mlflow,tensorboard") == tuple(parse_trackers("tensorboard,mlflow"))
    with pytest.raises(ConfigError, match="unknown tracker wandb"):
        parse_trackers("tensorboard,wandb")
