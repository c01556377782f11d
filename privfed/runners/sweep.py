"""The ε sweep: one run per ε target (∞ = no DP), per tuning trial and per seed; then the table and the plot.

What makes the comparison fair:
- With ``--tune`` every ε, ∞ included, runs the same trials; each ε keeps the trial whose mean validation quality
  over the seeds is best, on a validation split carved from the clients' training data (never the test set), and
  the table reports that trial's *test* quality. Tuning is not privacy-accounted (the literature's convention).
- With ``--seeds K`` every cell is K runs (model init, sampling, noise and, unless ``--fixed-split``, the data
  split); tables show mean ± 95 % Student-t interval and K, plots draw error bars.

Finished runs are reused, interrupted ones resumed, and one whose config changed is run again in its place; a run
that fails is recorded with its error and the sweep goes on.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfed.config import DpMode, ExperimentConfig
from privfed.errors import ConfigError
from privfed.report.intervals import Interval
from privfed.results import (
    RESULTS,
    RunDirectory,
    jsonable,
    metric_as,
    quality_key,
    refuse_replacing,
)
from privfed.run_result import read_results
from privfed.runners.tuning import TuneAxis, apply_trial, best_index, check_axes, trial_tag, trial_text, trials

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from privfed.audit.settings import AuditSettings
    from privfed.run_result import RunResult

SWEEP_JSON = "sweep.json"


def parse_epsilons(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            value = math.inf if part in ("inf", "infinity", "∞") else float(part)
        except ValueError:
            raise ConfigError("--epsilons", f"{part!r} is not a number; give e.g. 1,3,8,inf") from None
        if not value > 0:
            raise ConfigError("--epsilons", f"every ε must be > 0 (inf = no DP), got {part}")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons", "give at least one value, e.g. 1,3,8,inf")
    return values


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs besides its base config: the ε targets, the tuning axes, the seeds."""

    epsilons: tuple[float, ...]
    tune: tuple[TuneAxis, ...] = ()
    seeds: int = 1
    fixed_split: bool = False  # every seed on the same data split (only init, sampling and noise vary)
    validation_fraction: float = 0.1  # tuned sweeps: share of each client's training data the tuner selects on

    def __post_init__(self) -> None:
        if not self.epsilons:
            raise ConfigError("--epsilons", "give at least one value, e.g. 1,3,8,inf")
        if not all(e > 0 for e in self.epsilons):
            raise ConfigError("--epsilons", f"every ε must be > 0 (inf = no DP), got {list(self.epsilons)}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ConfigError("--epsilons", f"repeats a value: {list(self.epsilons)}")
        if self.seeds < 1:
            raise ConfigError("--seeds", f"must be >= 1, got {self.seeds}")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError("--validation-fraction", f"must be in (0, 1), got {self.validation_fraction}")

    @property
    def tuned(self) -> bool:
        return bool(self.tune)

    def as_dict(self) -> dict:
        return {"epsilons": list(self.epsilons), "tune": [{"keys": list(a.keys), "values": [list(v) for v in a.values]}
                                                          for a in self.tune],
                "seeds": self.seeds, "fixed_split": self.fixed_split,
                "validation_fraction": self.validation_fraction if self.tuned else None}

    @classmethod
    def from_dict(cls, raw: dict) -> SweepPlan:
        axes = tuple(TuneAxis(tuple(a["keys"]), tuple(tuple(v) for v in a["values"])) for a in raw["tune"])
        return cls(tuple(float(e) for e in raw["epsilons"]), axes, raw["seeds"], raw["fixed_split"],
                   raw["validation_fraction"] or 0.1)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its ε, trial and seed, and the config that says so."""

    epsilon: float
    trial: dict[str, Any]
    seed_index: int
    config: ExperimentConfig


def epsilon_tag(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def config_for(base: ExperimentConfig, plan: SweepPlan, epsilon: float, trial: dict[str, Any],
               seed_index: int) -> ExperimentConfig:
    """``base`` at ``epsilon`` with the trial's values, the seed's offset and the tuner's validation split."""
    cfg = apply_trial(base, trial)
    privacy = (dataclasses.replace(cfg.privacy, mode=DpMode.OFF) if math.isinf(epsilon) else
               dataclasses.replace(cfg.privacy, mode=DpMode.TARGET_EPSILON, epsilon=epsilon))
    data = cfg.data
    if plan.tuned:
        data = dataclasses.replace(data, validation_fraction=plan.validation_fraction)
    if plan.fixed_split:
        data = dataclasses.replace(data, split_seed=base.seed if base.data.split_seed < 0 else base.data.split_seed)
    name = f"{base.name}-eps{epsilon_tag(epsilon)}" + (f"-{trial_tag(trial)}" if trial else "") + \
        (f"-s{seed_index}" if plan.seeds > 1 else "")
    return dataclasses.replace(cfg, name=name, seed=base.seed + seed_index, privacy=privacy, data=data)


def plan_runs(base: ExperimentConfig, plan: SweepPlan) -> list[RunSpec]:
    """Every run of the sweep, in order; each config is validated here, before anything runs."""
    check_axes(base, plan.tune)
    return [RunSpec(epsilon, trial, s, config_for(base, plan, epsilon, trial, s))
            for epsilon in plan.epsilons for trial in trials(plan.tune, private=math.isfinite(epsilon))
            for s in range(plan.seeds)]


# ---------------------------------------------------------------- the typed result


def metric_of(results: dict) -> str:
    return quality_key(results["final"])


def _final(results: dict, key: str) -> float:
    value = results["final"].get(key)
    return math.nan if value is None else float(value)


def upload_per_client(results: dict) -> float:
    """Bytes a client uploads in a round, averaged over the rounds (0 for a run without rounds)."""
    sizes = [float(r["bytes_up_per_client"]) for r in results["rounds"] if r.get("bytes_up_per_client") not in
             (None, "")]
    if not sizes:  # plain aggregation before per-client bytes were recorded: total over clients trained
        sizes = [float(r["bytes_up"]) / max(int(r["clients_trained"]), 1) for r in results["rounds"]]
    return math.fsum(sizes) / len(sizes) if sizes else 0.0


@dataclass(frozen=True)
class Point:
    """One ε of a sweep: the runs (one per seed) of the trial it kept."""

    target_epsilon: float  # inf: no DP
    trial: dict[str, Any]
    runs: tuple[dict, ...]

    @property
    def metric(self) -> str:
        return metric_of(self.runs[0])

    @property
    def quality(self) -> Interval:
        return Interval.of(_final(r, self.metric) for r in self.runs)

    @property
    def validation(self) -> Interval | None:
        key = metric_as(self.metric, "val_")
        values = [_final(r, key) for r in self.runs]
        return None if any(math.isnan(v) for v in values) else Interval.of(values)

    @property
    def epsilon(self) -> Interval:
        return Interval.of(_final(r, "epsilon") for r in self.runs)

    @property
    def upload(self) -> Interval:
        """Bytes uploaded per client per round."""
        return Interval.of(upload_per_client(r) for r in self.runs)

    @property
    def private(self) -> bool:
        return math.isfinite(self.target_epsilon)


@dataclass(frozen=True)
class TrialScore:
    """One trial at one ε, over its seeds: what the tuner compared."""

    target_epsilon: float
    trial: dict[str, Any]
    runs: tuple[dict, ...]
    chosen: bool

    @property
    def point(self) -> Point:
        return Point(self.target_epsilon, self.trial, self.runs)


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: one :class:`Point` per ε, every trial the tuner scored, and every run."""

    label: str
    plan: SweepPlan
    points: tuple[Point, ...]
    trials: tuple[TrialScore, ...] = ()
    failed: tuple[dict, ...] = ()  # {"run": name, "error": text} for each run that failed
    runs: tuple[dict, ...] = field(default=())

    @property
    def metric(self) -> str:
        return self.points[0].metric if self.points else "eval_accuracy"

    @property
    def nonprivate(self) -> Point | None:
        return next((p for p in self.points if not p.private), None)

    def tuning_text(self) -> str:
        """What the table and the plot say about the hyper-parameters."""
        if not self.plan.tuned:
            return ("Same hyper-parameters for every ε, not tuned: the non-private line is not a tuned baseline.")
        axes = "; ".join(a.describe() for a in self.plan.tune)
        return (f"Tuned at every ε (∞ included) over {axes}, selected on the mean validation quality over the seeds "
                f"({self.plan.validation_fraction:.0%} of each client's training examples held out; never the test "
                "set). Tuning is not privacy-accounted (the literature's convention): ε covers the selected run's "
                "training only.")

    def seed_text(self) -> str:
        split = "one data split for every seed" if self.plan.fixed_split else "each seed its own data split"
        return f"{self.plan.seeds} seed(s) per cell ({split}); mean ± 95 % Student-t interval."

    def anomalies(self) -> list[str]:
        """Private points above the non-private one beyond both intervals: a sign of an under-tuned baseline."""
        base = self.nonprivate
        if base is None:
            return []
        sign = 1 if self.metric.endswith("accuracy") else -1
        out = []
        for p in self.points:
            if p.private and sign * (p.quality.low if sign > 0 else p.quality.high) > sign * (
                    base.quality.high if sign > 0 else base.quality.low):
                out.append(f"ε = {epsilon_tag(p.target_epsilon)} ({p.quality.text()}) beats the non-private model "
                           f"({base.quality.text()}) beyond both intervals: the non-private run is under-tuned")
        return out

    def to_dataframe(self) -> pandas.DataFrame:
        """:meth:`seed_rows` as a DataFrame: one row per kept run."""
        import pandas

        return pandas.DataFrame(self.seed_rows())

    def plot(self, path: str | Path | None = None) -> Figure:
        """Quality against ε with 95 % intervals (what ``privfed sweep`` saves as privacy_utility.png)."""
        from privfed.report.plots import plot_privacy_utility

        return plot_privacy_utility([self], path=path)

    def seed_rows(self) -> list[dict[str, Any]]:
        """One row per run of each point's kept trial."""
        rows = []
        for p in self.points:
            for r in p.runs:
                rows.append({"run": r["config"]["name"], "seed": r["config"]["seed"],
                             "target ε": "inf" if not p.private else p.target_epsilon,
                             "ε spent": r["final"]["epsilon"], "quality": _final(r, p.metric),
                             "validation": _final(r, metric_as(p.metric, "val_")),
                             "trial": trial_text(p.trial), "seconds": r["seconds"]})
        return rows


def _group_key(results: dict) -> str:
    """A run's config without what a seed changes: runs that differ only in seed are one cell."""
    cfg = json.loads(json.dumps(results["config"]))
    for key in ("name", "seed"):
        cfg.pop(key, None)
    cfg.get("data", {}).pop("split_seed", None)
    return json.dumps(cfg, sort_keys=True)


def _target(results: dict) -> float:
    target = results["privacy"].get("target_epsilon")
    if target is not None:
        return float(target)
    return math.inf if results["privacy"]["mode"] == "off" else float(results["final"]["epsilon"])


def summarize(runs: Sequence[dict], label: str | None = None) -> Sweep:
    """Runs grouped into points (runs whose configs differ only in seed are one point), untuned; how
    ``privfed table`` reads run directories that no sweep wrote."""
    if not runs:
        raise ValueError("summarize needs at least one run's results")
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    points = sorted((Point(_target(g[0]), {}, tuple(g)) for g in groups.values()),
                    key=lambda p: (p.target_epsilon, p.runs[0]["config"]["name"]))
    seeds = max(len(p.runs) for p in points)
    name = label or re.sub(r"(-eps[^-]+)?(-s\d+)?$", "", runs[0]["config"]["name"])
    plan = SweepPlan(tuple(dict.fromkeys(p.target_epsilon for p in points)), (), seeds)
    return Sweep(name, plan, tuple(points), runs=tuple(runs))


# ---------------------------------------------------------------- running


def _reusable(cfg: ExperimentConfig, run_dir: RunDirectory) -> tuple[bool, bool]:
    """(finished, resumable) for a run of ``cfg`` in ``run_dir``."""
    same = run_dir.holds_run() and run_dir.config() == cfg
    return same and (run_dir.path / RESULTS).is_file(), same and run_dir.has_checkpoint()


def _as_run(cfg: ExperimentConfig, audit: AuditSettings | None) -> ExperimentConfig:
    """The config a run of the sweep trains (an audited sweep's runs train the audited config)."""
    if audit is None:
        return cfg
    from privfed.audit.settings import audited_config

    return audited_config(cfg, audit)


def run_one(cfg: ExperimentConfig, path: Path, audit: AuditSettings | None, progress: bool) -> RunResult:
    """One run of the sweep in ``path``: reused when finished with the same config, resumed when interrupted,
    else run (over whatever run was there). With ``audit`` it is a ``privfed audit`` run whose results carry the
    audit's headline numbers under ``"audit"``."""
    if audit is not None:
        return _audited(cfg, path, audit, progress)
    from privfed.engines.inprocess import run

    finished, resumable = _reusable(cfg, RunDirectory(path))
    if finished:
        return read_results(path)
    return run(cfg, path, resume=resumable, overwrite=True, progress=progress)


def _audited(cfg: ExperimentConfig, path: Path, settings: AuditSettings, progress: bool) -> RunResult:
    from privfed.audit.report import AUDIT_JSON, headline, read_report
    from privfed.runners.audit import run_audit
    from privfed.audit.settings import audited_config

    run_dir = RunDirectory(path)
    done = (run_dir.holds_run() and run_dir.config() == audited_config(cfg, settings)
            and (path / RESULTS).is_file() and (path / AUDIT_JSON).is_file()
            and read_report(path)["settings"] == settings.as_dict())
    if not done:
        run_audit(cfg, path, settings, overwrite=True, progress=progress)
    results = read_results(path)
    results["audit"] = headline(read_report(path))
    return results


def _run_quietly(cfg: ExperimentConfig, path: Path, audit: AuditSettings | None) -> dict | str:
    """A worker's run: its results, or its error as text (one failed run must not lose the others)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return run_one(cfg, path, audit, progress=False)
    except Exception as err:  # noqa: BLE001 - recorded, and the sweep goes on
        return f"{type(err).__name__}: {err}"


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def execute(specs: Sequence[RunSpec], out_dir: Path, *, audit: AuditSettings | None = None, progress: bool = True,
            workers: int = 1) -> dict[str, dict | str]:
    """Run every spec in ``out_dir/<its name>``; see :func:`execute_jobs`."""
    return execute_jobs([(s.config, out_dir / s.config.name) for s in specs], audit=audit, progress=progress,
                        workers=workers)


def execute_jobs(jobs: Sequence[tuple[ExperimentConfig, Path]], *, audit: AuditSettings | None = None,
                 progress: bool = True, workers: int = 1) -> dict[str, dict | str]:
    """Run each config in its directory (``workers`` processes of one torch thread each when > 1, so runs of
    several sweeps can share the pool); returns each run's results or its error, by run name. A progress bar
    counts the runs."""
    from tqdm.auto import tqdm

    outcomes: dict[str, dict | str] = {}
    bar = tqdm(total=len(jobs), desc="sweep runs", unit="run", disable=not progress or len(jobs) < 2,
               file=sys.stderr, position=1 if workers <= 1 else 0, leave=True)
    try:
        if workers <= 1:
            for cfg, path in jobs:
                bar.set_postfix_str(cfg.name)
                try:
                    outcomes[cfg.name] = run_one(cfg, path, audit, progress and len(jobs) == 1)
                except ConfigError:
                    raise  # a config the data refuses (too few examples for the validation split): bad input
                except Exception as err:  # noqa: BLE001 - recorded, and the sweep goes on
                    outcomes[cfg.name] = f"{type(err).__name__}: {err}"
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                        initializer=_worker_init) as pool:
                futures = {pool.submit(_run_quietly, cfg, path, audit): cfg.name for cfg, path in jobs}
                for future in concurrent.futures.as_completed(futures):
                    outcomes[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
    return outcomes


def select(base_name: str, plan: SweepPlan, specs: Sequence[RunSpec], outcomes: dict[str, dict | str]) -> Sweep:
    """Each ε's kept trial: the best mean validation quality over the seeds (untuned: the one trial).

    ``outcomes`` may hold other sweeps' runs too (one pool for a whole study): only ``specs``' runs are this
    sweep's."""
    mine = {s.config.name: outcomes[s.config.name] for s in specs if s.config.name in outcomes}
    failed = tuple({"run": name, "error": o} for name, o in mine.items() if isinstance(o, str))
    points, scores = [], []
    for epsilon in plan.epsilons:
        candidates = []
        for trial in trials(plan.tune, private=math.isfinite(epsilon)):
            cell = [s for s in specs if s.epsilon == epsilon and s.trial == trial]
            done = tuple(o for s in cell if isinstance(o := mine.get(s.config.name), dict))
            candidates.append((trial, done, len(done) == len(cell)))
        complete = [(t, runs) for t, runs, whole in candidates if whole and runs]
        if not complete:
            continue  # every trial lost a run: the ε is missing, its failures listed
        if plan.tuned:
            validation = [Point(epsilon, t, runs).validation for t, runs in complete]
            chosen = best_index([v.mean if v is not None else math.nan for v in validation],
                                metric_of(complete[0][1][0]))
        else:
            chosen = 0
        points.append(Point(epsilon, complete[chosen][0], complete[chosen][1]))
        scores += [TrialScore(epsilon, t, runs, i == chosen) for i, (t, runs) in enumerate(complete)]
    every = tuple(o for o in mine.values() if isinstance(o, dict))
    return Sweep(base_name, plan, tuple(points), tuple(scores), failed, every)


def sweep(base: ExperimentConfig, plan: SweepPlan | Sequence[float], out_dir: Path, *, progress: bool = True,
          audit: AuditSettings | None = None, workers: int = 1, overwrite: bool = False) -> Sweep:
    """Run the sweep ``plan`` describes (a bare list of ε: one untuned seed each) and write its report in
    ``out_dir``: table.md, seeds.csv, tuning.md (tuned), sweep.json, privacy_utility.png. Runs already in
    ``out_dir`` with the same config are reused (or resumed); one of another config is refused (ConfigError)
    before anything runs, unless ``overwrite``."""
    if not isinstance(plan, SweepPlan):
        plan = SweepPlan(tuple(float(e) for e in plan))
    out_dir = Path(out_dir)
    specs = plan_runs(base, plan)
    refuse_replacing([(_as_run(s.config, audit), out_dir / s.config.name) for s in specs], overwrite)
    try:
        outcomes = execute(specs, out_dir, audit=audit, progress=progress, workers=workers)
    except ConfigError as err:  # the sweep's flag set the key the data refused
        raise (ConfigError("--validation-fraction", err.problem) if err.key == "data.validation_fraction"
               and plan.tuned else err) from None
    result = select(base.name, plan, specs, outcomes)
    if not result.points:
        raise ConfigError("--epsilons", f"every run of the sweep failed; the first: {result.failed[0]['error']}")
    write_report(result, out_dir)
    return result


# ---------------------------------------------------------------- files


def write_report(result: Sweep, out_dir: Path) -> str:
    """table.md (mean ± interval per ε), seeds.csv (every kept run), tuning.md (every trial, tuned sweeps),
    sweep.json (the plan and what was kept, for ``privfed table``), privacy_utility.png (audited: also
    audit_epsilon.png); returns the Markdown table."""
    from privfed.report.plots import plot_audit_epsilon, plot_privacy_utility
    from privfed.report.tables import csv_table, sweep_markdown, tuning_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    text = sweep_markdown(result)
    (out_dir / "table.md").write_text(text + "\n")
    (out_dir / "seeds.csv").write_text(csv_table(result.seed_rows()))
    if result.plan.tuned:
        (out_dir / "tuning.md").write_text(tuning_markdown(result) + "\n")
    record = {"label": result.label, "plan": result.plan.as_dict(),
              "points": [{"target_epsilon": p.target_epsilon, "trial": p.trial,
                          "runs": [r["config"]["name"] for r in p.runs]} for p in result.points],
              "trials": [{"target_epsilon": t.target_epsilon, "trial": t.trial, "chosen": t.chosen,
                          "runs": [r["config"]["name"] for r in t.runs]} for t in result.trials],
              "failed": list(result.failed)}
    (out_dir / SWEEP_JSON).write_text(json.dumps(jsonable(record), indent=2) + "\n")
    plot_privacy_utility([result], path=out_dir / "privacy_utility.png")
    if any(r.get("audit", {}).get("ε_lb") is not None for r in result.runs):
        plot_audit_epsilon(list(result.runs), path=out_dir / "audit_epsilon.png")
    return text


def load_sweep(out_dir: Path) -> Sweep:
    """A sweep as its directory holds it (sweep.json and each run's results.json)."""
    out_dir = Path(out_dir)
    record = json.loads((out_dir / SWEEP_JSON).read_text())

    def runs(names: list[str]) -> tuple[dict, ...]:
        return tuple(read_results(out_dir / n) for n in names)

    points = tuple(Point(float(p["target_epsilon"]), p["trial"], runs(p["runs"])) for p in record["points"])
    scores = tuple(TrialScore(float(t["target_epsilon"]), t["trial"], runs(t["runs"]), t["chosen"])
                   for t in record["trials"])
    every = {r["config"]["name"]: r for p in [*points, *scores] for r in p.runs}
    return Sweep(record["label"], SweepPlan.from_dict(record["plan"]), points, scores, tuple(record["failed"]),
                 tuple(every.values()))


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()
