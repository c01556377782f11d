"""Experiment tracking: a run's rounds in TensorBoard or MLflow, beside privfed's own CSV and plots.

Each tracker is a :class:`~privfed.server.events.Callback`, so it sees what every other callback sees and needs no
branch in the round loop. Every round it logs each number of the round's row (the row of metrics.csv): quality and
loss (``eval_*``, ``fed_*``), ``train_loss``, ``epsilon`` and each client's ε (``epsilon/client_<id>``), bytes up
and down, seconds and the aggregation's counters; the resolved config is logged once as parameters. Both are
optional extras (``pip install 'privfed[tracking]'``, or ``./install.sh --tracking``); asking for one that is not
installed is a clear error before the run starts.

From the command line: ``privfed run --report-to tensorboard,mlflow``. TensorBoard's event files go to
``<out>/tensorboard`` (``tensorboard --logdir runs``; a run started over replaces them, a resumed one drops the
steps it redoes); MLflow logs to its own tracking URI (``MLFLOW_TRACKING_URI``,
else ``./mlflow.db``), experiment ``privfed`` (or ``MLFLOW_EXPERIMENT_NAME``), one MLflow run per privfed run,
marked finished, failed or killed (Ctrl-C) as the run ends.
"""
from __future__ import annotations

import enum
import importlib.util
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from privfed.config import ExperimentConfig, dump_yaml, to_dict
from privfed.errors import ConfigError
from privfed.server.events import Callback, RoundRecord, RunStarted, RunState


class Tracker(enum.Enum):
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"


_PACKAGES = {Tracker.TENSORBOARD: "tensorboard", Tracker.MLFLOW: "mlflow"}


def parse_trackers(text: str) -> tuple[Tracker, ...]:
    """``"tensorboard,mlflow"`` -> the trackers, each checked to be installed (ConfigError otherwise)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    known = {t.value: t for t in Tracker}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError("--report-to", f"unknown tracker {unknown[0] if unknown else '(none)'}; choose from "
                                         + ", ".join(known))
    trackers = tuple(dict.fromkeys(known[n] for n in names))
    for tracker in trackers:
        if importlib.util.find_spec(_PACKAGES[tracker]) is None:
            raise ConfigError("--report-to", f"{tracker.value} is not installed: pip install 'privfed[tracking]' "
                                             "(or ./install.sh --tracking)")
    return trackers


def row_scalars(row: dict, finite_only: bool = True) -> dict[str, float]:
    """A round's row as named numbers: every number in it (``finite_only``: without inf and nan, which trackers
    refuse), each client's ε as ``epsilon/client_<id>``."""
    scalars: dict[str, float] = {}
    for key, value in row.items():
        if key == "round":
            continue
        if key == "client_epsilons" and isinstance(value, dict):
            scalars.update({f"epsilon/client_{cid}": float(eps) for cid, eps in value.items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[key] = float(value)
    return {k: v for k, v in scalars.items() if math.isfinite(v)} if finite_only else scalars


def config_parameters(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config flattened to ``section.key`` -> text (MLflow's parameters)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = str(value)

    walk("", to_dict(cfg))
    return flat


class TensorBoardReporter(Callback):
    """Scalars per round in TensorBoard event files under ``log_dir`` (step = round); the resolved config as text."""

    def __init__(self, cfg: ExperimentConfig, log_dir: Path):
        self.cfg, self.log_dir = cfg, Path(log_dir)
        self.writer = None

    def on_run_start(self, event: RunStarted) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not event.resumed and self.log_dir.is_dir():  # a run started over: the old run's curves go with it
            shutil.rmtree(self.log_dir)
        # resumed: steps after the checkpoint were logged before the interruption; TensorBoard drops them
        self.writer = SummaryWriter(log_dir=str(self.log_dir),
                                    purge_step=event.state.completed_rounds + 1 if event.resumed else None)
        self.writer.add_text("config", "```yaml\n" + dump_yaml(self.cfg) + "\n```", 0)

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        for key, value in row_scalars(state.rows[-1]).items():
            self.writer.add_scalar(key, value, record.round)
        self.writer.flush()  # on disk every round: a killed run keeps what it logged

    def on_run_end(self, results: dict) -> None:
        self.writer.close()

    def on_run_failed(self, error: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowReporter(Callback):
    """One MLflow run per privfed run (a resumed run is a new MLflow run, tagged): the config as parameters, each
    round's numbers as metrics (step = round), the final model's as ``final/<metric>``; marked finished at the end."""

    def __init__(self, cfg: ExperimentConfig, tracking_uri: str | None = None, experiment: str | None = None):
        self.cfg, self.tracking_uri = cfg, tracking_uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "privfed")
        self.client = self.run_id = None

    def on_run_start(self, event: RunStarted) -> None:
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri or mlflow.get_tracking_uri())
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.cfg.name,
                                     tags={"privfed.resumed": str(event.resumed).lower()})
        self.run_id = run.info.run_id
        params = sorted(config_parameters(self.cfg).items())
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params[start:start + 100]])

    def _log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        self._log(row_scalars(state.rows[-1]), record.round)

    def on_run_end(self, results: dict) -> None:
        final = row_scalars(results.get("final", {}))
        self._log({f"final/{k}": v for k, v in final.items()}, results["rounds"][-1]["round"] if results["rounds"]
                  else 0)
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_run_failed(self, error: BaseException) -> None:
        if self.run_id is not None:  # MLflow shows why it stopped: interrupted (Ctrl-C), or failed
            self.client.set_terminated(self.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


def tracking_callbacks(trackers: Iterable[Tracker], cfg: ExperimentConfig, out_dir: Path) -> tuple[Callback, ...]:
    """The callbacks that report a run of ``cfg`` (written to ``out_dir``) to each of ``trackers``."""
    return tuple(TensorBoardReporter(cfg, Path(out_dir) / "tensorboard") if tracker is Tracker.TENSORBOARD
                 else MlflowReporter(cfg) for tracker in trackers)
