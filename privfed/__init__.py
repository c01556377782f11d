"""privfed: federated training of language models under differential privacy and secure aggregation.

Typical use::

    import privfed
    cfg = privfed.load_config(overrides=["training.rounds=2"])   # the built-in demo, changed
    result = privfed.run(cfg, "runs/demo")       # a RunResult: result.quality, result.epsilon, result["rounds"]
    print(privfed.summary_table([result]))
    fig = result.plot()                            # or privfed.plots.plot_rounds(result); result.to_dataframe()

Secure aggregation on its own (what the server sees, what it recovers): :func:`make_aggregator` with a
:class:`ServerView`. The heavier parts (plots, aggregation back-ends, Paillier packing and keys) are imported on
first use, so ``import privfed`` stays quick.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfed.config import (
    Accountant,
    Aggregation,
    AggregationConfig,
    AggregationRule,
    AttackConfig,
    AttackKind,
    ClientData,
    ClientOptimizer,
    Clipping,
    DefenceConfig,
    DpMode,
    DropoutStage,
    ExperimentConfig,
    LoraBias,
    Partition,
    RecordFormat,
    Regime,
    SizeGrowth,
    Strategy,
    Task,
    TaskChoice,
    TextUnit,
    from_dict,
    load_config,
    to_dict,
)
from privfed.errors import (
    ConfigError,
    MissingAssetError,
    PrivacyViolationError,
    PrivfedError,
)

__version__ = "0.7.0"

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from privfed.aggregation import AggregationBackend as Aggregator
    from privfed.aggregation import AggregationOutcome
    from privfed import audit
    from privfed.attacks.grid_cells import CellResult, GridAggregation, GridDefence, GridSettings
    from privfed.runners.attack_grid import attack_grid_config
    from privfed.audit.settings import AuditSettings
    from privfed.federation.setup import build_federation
    from privfed.federation.server_view import ReceivedMessage, ServerView
    from privfed.observe.tracking import Tracker, tracking_callbacks
    from privfed.report import plots
    from privfed.report.intervals import Interval
    from privfed.run_result import RunResult, compare
    from privfed.runners.sweep import Point, Sweep, SweepPlan, TrialScore, load_sweep, summarize
    from privfed.secure.packing import SlotLayout
    from privfed.secure.paillier_keys import PaillierKey
    from privfed.server.events import (
        Callback,
        ClientSkipped,
        ClientTrained,
        RoundAggregated,
        RoundCombined,
        RoundRecord,
        RoundStarted,
        RunStarted,
        RunState,
    )

# public name -> "module:attribute" (or "module" for a whole module), imported on first access
_LAZY = {
    "plots": "privfed.report.plots",
    "audit": "privfed.audit",
    "build_federation": "privfed.federation.setup:build_federation",
    "attack_grid_config": "privfed.runners.attack_grid:attack_grid_config",
    "ServerView": "privfed.federation.server_view:ServerView",
    "ReceivedMessage": "privfed.federation.server_view:ReceivedMessage",
    "Aggregator": "privfed.aggregation.base:AggregationBackend",
    "AggregationOutcome": "privfed.aggregation.base:AggregationOutcome",
    "SlotLayout": "privfed.secure.packing:SlotLayout",
    "Interval": "privfed.report.intervals:Interval",
    **{name: f"privfed.runners.sweep:{name}" for name in ("Sweep", "SweepPlan", "Point", "TrialScore", "summarize",
                                                         "load_sweep")},
    "PaillierKey": "privfed.secure.paillier_keys:PaillierKey",
    **{name: f"privfed.observe.tracking:{name}" for name in ("Tracker", "tracking_callbacks")},
    **{name: f"privfed.run_result:{name}" for name in ("RunResult", "compare")},
    **{name: f"privfed.attacks.grid_cells:{name}" for name in ("GridSettings", "GridDefence", "GridAggregation")},
    **{name: f"privfed.server.events:{name}" for name in
       ("Callback", "RunStarted", "RoundStarted", "ClientTrained", "ClientSkipped", "RoundAggregated",
        "RoundCombined", "RoundRecord", "RunState")},
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'privfed' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:  # tab completion sees the lazy names too
    return sorted(set(globals()) | set(__all__))


def run(config: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run one federated experiment and write its artefacts to ``out_dir``; returns the :class:`RunResult`
    (results.json as a mapping, with ``.quality``, ``.epsilon``, ``.to_dataframe()``, ``.plot()``).

    ``out_dir`` must not hold an earlier run unless ``resume`` (continue it) or ``overwrite`` (start over) is set.
    ``callbacks`` (:class:`Callback` subclasses) receive every round event after privfed's own.
    """
    from privfed.engines.inprocess import run as _run

    return _run(config, Path(out_dir), resume=resume, overwrite=overwrite, progress=progress,
                callbacks=tuple(callbacks))


def load_results(run_dir: str | Path) -> RunResult:
    """The :class:`RunResult` of a finished run (a run directory or its results.json), as :func:`run` returned it:
    ε and losses are floats again (results.json writes ``"inf"`` and ``"nan"``)."""
    from privfed.run_result import read_results

    return read_results(Path(run_dir))


def resume(out_dir: str | Path, *, progress: bool = True) -> RunResult:
    """Continue an interrupted run from its last checkpoint (same config, same outcome as an uninterrupted run)."""
    from privfed.results import RunDirectory

    return run(RunDirectory(Path(out_dir)).config(), out_dir, resume=True, progress=progress)


def sweep(config: ExperimentConfig, epsilons: Sequence[float], out_dir: str | Path, *, tune: Sequence[str] = (),
          seeds: int = 1, fixed_split: bool = False, validation_fraction: float = 0.1, progress: bool = True,
          audit: AuditSettings | None = None, workers: int = 1, overwrite: bool = False) -> Sweep:
    """Runs per ε target (``math.inf`` = no DP) under ``out_dir``, then table.md, seeds.csv, sweep.json and the
    privacy/utility plot there; returns the :class:`Sweep` (a :class:`Point` per ε, with ``.quality`` as mean ±
    95 % interval over the seeds, ``.runs`` each run's results; ``sweep.seed_rows()`` one row per run).

    ``tune`` (``["training.lr=0.005,0.01,0.02", ...]``, as ``--tune``) runs every trial at every ε, ∞ included,
    and keeps per ε the trial with the best mean quality on a validation split (``validation_fraction`` of each
    client's training examples; never the test set); tuning is not privacy-accounted. ``seeds`` repeats every
    cell (model init, sampling, noise, and the data split unless ``fixed_split``); ``workers`` > 1 runs that many
    runs at once, one torch thread each. Finished runs are reused, interrupted ones resumed; a run in
    ``out_dir`` of another config is refused (ConfigError) unless ``overwrite`` starts it over. With ``audit``
    (:class:`privfed.audit.AuditSettings`) every run is audited: ε_lb and membership AUC join the results, and
    audit_epsilon.png plots ε_lb against ε."""
    from privfed.runners.sweep import SweepPlan
    from privfed.runners.sweep import sweep as _sweep
    from privfed.runners.tuning import parse_tune

    plan = SweepPlan(tuple(float(e) for e in epsilons), tuple(parse_tune(t) for t in tune), seeds, fixed_split,
                     validation_fraction)
    return _sweep(config, plan, Path(out_dir), progress=progress, audit=audit, workers=workers, overwrite=overwrite)


def attack_grid(config: ExperimentConfig, out_dir: str | Path, settings: GridSettings | None = None, *,
                overwrite: bool = False) -> list[CellResult]:
    """Poisoning attacks x defences x aggregation methods x privacy settings (:class:`GridSettings`), one run per
    cell under ``out_dir``, then attack_grid.md / .json / .png there; returns each cell's status and metrics
    (clean quality, attack success rate, attacker survival, backdoor persistence). A cell the configuration
    refuses (a robust rule under plain secagg) is recorded with the reason. Cells already run in ``out_dir`` are
    reused; one of another config is refused (ConfigError) unless ``overwrite`` starts it over."""
    from privfed.runners.attack_grid import run_grid

    return run_grid(config, Path(out_dir), settings, overwrite=overwrite)


def summary_table(results: list[dict]) -> str:
    """Markdown table: one row per run, ε spent against final quality."""
    from privfed.report.tables import markdown_table, summary_rows

    return markdown_table(summary_rows(results))


def sweep_table(result: Sweep) -> str:
    """Markdown: a sweep's points (mean ± 95 % interval over seeds, the trial each ε kept), with what was tuned
    and how many seeds in words above it (what ``privfed sweep`` writes to table.md)."""
    from privfed.report.tables import sweep_markdown

    return sweep_markdown(result)


def tuning_table(result: Sweep) -> str:
    """Markdown: every trial the tuner ran at every ε, its validation and test quality, and which it kept."""
    from privfed.report.tables import tuning_markdown

    return tuning_markdown(result)


def rounds_table(results: dict) -> str:
    """Markdown table of one run: quality, ε, bytes and seconds per round."""
    from privfed.report.tables import markdown_table, round_rows

    return markdown_table(round_rows(results))


def make_aggregator(aggregation: AggregationConfig, *, num_clients: int, vector_length: int,
                    progress: bool = False) -> Aggregator:
    """A secure-sum back-end on its own, for rounds of up to ``num_clients`` clients with ids 0..num_clients-1.

    ``aggregator.aggregate(round, {client: vector}, dropouts, view=ServerView())`` returns an
    :class:`AggregationOutcome` (the sum, or None if the round aborted; contributors; bytes; seconds; ``details``,
    whose keys depend on the back-end) and fills the view with what the server received. Vectors hold
    ``vector_length`` values: an update in [-clip_range, clip_range], then the client's weight in [0, 1] (sent
    in units of clip_range, so never clipped; a training run's contributions look like this). ``plan()`` is the
    cost line a run prints first;
    ``prepare_round(round, clients)`` starts Paillier's obfuscators early (in training, while clients train);
    ``close()``, or a ``with`` block, stops Paillier's worker processes. The back-end also makes each round's
    client and server halves, which talk only in bytes (``server_half``, ``client_half``; see
    :mod:`privfed.aggregation`).
    """
    from privfed.aggregation import make_backend

    if num_clients < 1 or vector_length < 1:
        raise ValueError(f"make_aggregator needs num_clients >= 1 and vector_length >= 1, got {num_clients} and "
                         f"{vector_length}")
    return make_backend(aggregation, max_clients=num_clients, vector_length=vector_length,
                        client_ids=list(range(num_clients)), progress=progress)


__all__ = [
    "Accountant",
    "Aggregation",
    "AggregationConfig",
    "AggregationOutcome",
    "AggregationRule",
    "Aggregator",
    "AttackConfig",
    "AttackKind",
    "Callback",
    "ClientData",
    "ClientOptimizer",
    "ClientSkipped",
    "ClientTrained",
    "Clipping",
    "ConfigError",
    "DefenceConfig",
    "DpMode",
    "DropoutStage",
    "ExperimentConfig",
    "GridAggregation",
    "GridDefence",
    "GridSettings",
    "Interval",
    "LoraBias",
    "MissingAssetError",
    "PaillierKey",
    "Point",
    "Partition",
    "PrivacyViolationError",
    "PrivfedError",
    "ReceivedMessage",
    "RecordFormat",
    "Regime",
    "RoundAggregated",
    "RoundCombined",
    "RoundRecord",
    "RoundStarted",
    "RunResult",
    "RunStarted",
    "RunState",
    "ServerView",
    "SizeGrowth",
    "SlotLayout",
    "Sweep",
    "SweepPlan",
    "Strategy",
    "Task",
    "TaskChoice",
    "TextUnit",
    "Tracker",
    "TrialScore",
    "__version__",
    "attack_grid",
    "attack_grid_config",
    "audit",
    "build_federation",
    "compare",
    "from_dict",
    "load_config",
    "load_results",
    "load_sweep",
    "make_aggregator",
    "plots",
    "resume",
    "rounds_table",
    "run",
    "summarize",
    "summary_table",
    "sweep_table",
    "sweep",
    "to_dict",
    "tracking_callbacks",
    "tuning_table",
]
