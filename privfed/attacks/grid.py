"""The attack grid: attacks x defences x aggregation methods x privacy settings, one run per cell, as a table and a
heat map (``privfed attack-grid``).

Every cell is an ordinary in-process run of the base config with the cell's ``attack``, ``defence``,
``aggregation`` and ``privacy`` keys set, so its run directory holds the usual files and results.json's ``attack``
holds the metrics. A cell the configuration refuses (a robust rule under plain secagg: the server holds no
individual update) is recorded with the reason, not run: that refusal is one of the grid's findings. A cell that
fails is recorded with its error and the grid goes on; finished cells are reused when the grid is run again. With
``warm_start_rounds`` every cell starts from one honestly trained model, so attacks hit a model that has learned.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import io
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from privfed.config import MALICIOUS_CODE, AttackKind, ExperimentConfig, apply_overrides, from_dict, to_dict
from privfed.errors import ConfigError
from privfed.results import jsonable, quality_key, refuse_replacing


class GridDefence(enum.Enum):
    """A column of the grid: a robust rule, or one of the defences that work under secure aggregation."""

    NONE = "none"
    NORM_BOUND = "norm_bound"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    CENTERED_CLIP = "centered_clip"
    RANGE_CHECK = "range_check"
    CLIENT_CLIP = "client_clip"


class GridAggregation(enum.Enum):
    PLAIN = "plain"  # the server reads every update
    SECAGG = "secagg"  # the server reads one sum
    GROUPED_SECAGG = "grouped_secagg"  # the server reads the sums of GridSettings.groups secagg groups


ROBUST = (GridDefence.NORM_BOUND, GridDefence.MEDIAN, GridDefence.TRIMMED_MEAN, GridDefence.KRUM,
          GridDefence.MULTI_KRUM, GridDefence.CENTERED_CLIP)
TARGETED = (AttackKind.BACKDOOR, AttackKind.SPREAD)


@dataclass(frozen=True)
class GridSettings:
    attacks: tuple[AttackKind, ...] = tuple(AttackKind)
    defences: tuple[GridDefence, ...] = (GridDefence.NONE, GridDefence.NORM_BOUND, GridDefence.MEDIAN,
                                         GridDefence.KRUM, GridDefence.RANGE_CHECK, GridDefence.CLIENT_CLIP)
    aggregations: tuple[GridAggregation, ...] = tuple(GridAggregation)
    epsilons: tuple[float, ...] = (math.inf, 8.0)
    groups: int = 5  # grouped secagg: groups per round
    client_clip: float = 2.0  # the L2 norm honest code clips to (the tiny grid's honest LoRA updates: 2.1-2.6)
    label_flippers: float = 0.3  # label_flip: the share of clients whose labels are flipped
    spread_fraction: float = 0.1  # spread: the share of every client's records poisoned
    warm_start_rounds: int = 0  # > 0: every cell starts from the model of an honest run of that many rounds
    warm_start_lr: float = 0.002  # the warm start's client learning rate (it trains the whole network)
    workers: int = 1  # cells run in parallel processes (each with one torch thread)


@dataclass(frozen=True)
class GridCell:
    attack: AttackKind
    defence: GridDefence
    aggregation: GridAggregation
    epsilon: float

    @property
    def label(self) -> str:
        eps = "nodp" if math.isinf(self.epsilon) else f"eps{self.epsilon:g}"
        return f"{self.attack.value}-{self.aggregation.value}-{self.defence.value}-{eps}"


@dataclass
class CellResult:
    cell: GridCell
    status: str  # "ran" | "refused" | "failed"
    reason: str = ""
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        c = self.cell
        return {"attack": c.attack.value, "defence": c.defence.value, "aggregation": c.aggregation.value,
                "epsilon": "inf" if math.isinf(c.epsilon) else c.epsilon, "status": self.status,
                "reason": self.reason, **self.metrics}


def cells(settings: GridSettings) -> list[GridCell]:
    """Every cell the settings name, except the combinations that add nothing: grouped secagg is there for the
    robust rules (its plain mean is secagg's)."""
    out = []
    for epsilon in settings.epsilons:
        for attack in settings.attacks:
            for aggregation in settings.aggregations:
                for defence in settings.defences:
                    if aggregation is GridAggregation.GROUPED_SECAGG and defence not in ROBUST:
                        continue
                    out.append(GridCell(attack, defence, aggregation, epsilon))
    return out


def cell_config(base: ExperimentConfig, cell: GridCell, settings: GridSettings) -> ExperimentConfig:
    """``base`` with the cell's attack, defence, aggregation and privacy (ConfigError when it refuses them)."""
    raw = to_dict(base)
    n, rounds = base.partition.num_clients, base.training.rounds
    last = base.attack.last_round or max(1, rounds - 1)
    first = base.attack.first_round if base.attack.last_round else max(1, last - 1)
    sets = [f"name={base.name}-{cell.label}", f"attack.kind={cell.attack.value}"]
    if cell.attack is not AttackKind.NONE:
        attackers = {AttackKind.LABEL_FLIP: list(range(max(1, round(settings.label_flippers * n)))),
                     AttackKind.SPREAD: list(range(n))}.get(cell.attack, list(base.attack.clients))
        sets += [f"attack.clients={attackers}", f"attack.first_round={first}", f"attack.last_round={last}"]
        if cell.attack is AttackKind.SPREAD:
            sets.append(f"attack.poison_fraction={settings.spread_fraction}")
    if math.isinf(cell.epsilon):
        sets.append("privacy.mode=off")
    else:
        sets += ["privacy.mode=target_epsilon", f"privacy.epsilon={cell.epsilon}"]
    method = "plain" if cell.aggregation is GridAggregation.PLAIN else "secagg"
    sets.append(f"aggregation.method={method}")
    if cell.aggregation is GridAggregation.GROUPED_SECAGG:
        sets.append(f"defence.groups={settings.groups}")
    if cell.defence in ROBUST:
        sets.append(f"defence.rule={cell.defence.value}")
    elif cell.defence is GridDefence.RANGE_CHECK:
        sets.append("defence.range_check=true")
    elif cell.defence is GridDefence.CLIENT_CLIP:
        sets.append(f"defence.client_clip={settings.client_clip}")
    return from_dict(apply_overrides(raw, sets))


def _metrics(results: dict) -> dict:
    final, attack = results["final"], results.get("attack", {})
    clean = quality_key(final)
    malicious = attack.get("kind") in {k.value for k in MALICIOUS_CODE}  # their ε is their own business
    attackers = set(attack.get("clients", [])) if malicious else set()
    honest = [c["epsilon"] for c in results.get("privacy", {}).get("clients", []) if c["client"] not in attackers]
    out = {"clean_metric": clean, "clean": final[clean],
           "honest_epsilon": max((float(e) for e in honest), default=math.inf),
           "server_learns": results.get("defence", {}).get("server_learns"),
           "seconds": results.get("seconds")}
    for key in ("attack_success_rate", "target_rate_clean", "asr_last_attack", "target_rate_clean_last_attack",
                "asr_peak", "survival_rate", "honest_survival_rate", "effect_at_stop", "persistence_rounds",
                "persists_to_end", "attacker_inputs", "attacker_inputs_rejected"):
        if key in attack:
            out[key] = attack[key]
    out["rounds_without_update"] = sum("no update" in note for note in results.get("notes", []))
    return out


def run_cell(base: ExperimentConfig, cell: GridCell, settings: GridSettings, out_dir: Path) -> CellResult:
    """One cell: its config (or the reason it is refused) and, if allowed, its run."""
    try:
        cfg = cell_config(base, cell, settings)
    except ConfigError as err:
        return CellResult(cell, "refused", str(err))
    from privfed.engines.inprocess import run  # torch: only for cells that run

    folder = out_dir / "cells" / cell.label
    done = folder / "results.json"
    if done.is_file():
        results = json.loads(done.read_text())
        if results.get("config") == json.loads(json.dumps(to_dict(cfg))):
            return CellResult(cell, "ran", "reused", _metrics(results))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a cell's round lines are in its results, not the console
            results = run(cfg, folder, overwrite=True, progress=False)
        return CellResult(cell, "ran", "", _metrics(results))
    except ConfigError as err:  # refused once the data is known (e.g. too few examples to poison)
        return CellResult(cell, "refused", str(err))
    except Exception as err:  # noqa: BLE001 - one failed cell must not lose the others
        return CellResult(cell, "failed", f"{type(err).__name__}: {err}")


def _allowed_config(base: ExperimentConfig, cell: GridCell, settings: GridSettings) -> ExperimentConfig | None:
    """The cell's config, or None for a cell refused by design."""
    try:
        return cell_config(base, cell, settings)
    except ConfigError:
        return None


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def run_grid(base: ExperimentConfig, out_dir: Path, settings: GridSettings | None = None,
             on_cell: Callable[[CellResult], None] | None = None, overwrite: bool = False) -> list[CellResult]:
    """Run every cell (in ``settings.workers`` processes), write attack_grid.json / .md / .png in ``out_dir``;
    returns the cells in grid order. ``on_cell`` is called as each cell finishes (a progress bar). A cell already
    run in ``out_dir`` with the same config is reused; one of another config is refused (ConfigError) before any
    cell runs, unless ``overwrite``."""
    settings = settings or GridSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.warm_start_rounds:
        from privfed.attacks.warm_start import warm_start

        base = warm_start(base, out_dir, settings.warm_start_rounds, settings.warm_start_lr)
    todo = cells(settings)
    refuse_replacing([(cfg, out_dir / "cells" / cell.label) for cell in todo
                      if (cfg := _allowed_config(base, cell, settings)) is not None], overwrite)
    started = time.perf_counter()
    results: dict[GridCell, CellResult] = {}
    if settings.workers <= 1:
        for cell in todo:
            results[cell] = run_cell(base, cell, settings, out_dir)
            if on_cell:
                on_cell(results[cell])
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(settings.workers, mp_context=context,
                                                    initializer=_worker_init) as pool:
            futures = {pool.submit(run_cell, base, cell, settings, out_dir): cell for cell in todo}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                if on_cell:
                    on_cell(results[futures[future]])
    ordered = [results[c] for c in todo]
    write_grid(ordered, out_dir, base, settings, time.perf_counter() - started)
    return ordered


def write_grid(results: list[CellResult], out_dir: Path, base: ExperimentConfig, settings: GridSettings,
               seconds: float) -> None:
    from privfed.attacks.grid_report import markdown, plot_grid

    payload = {"base": to_dict(base), "settings": _settings_dict(settings), "seconds": seconds,
               "cells": [r.as_dict() for r in results]}
    (out_dir / "attack_grid.json").write_text(json.dumps(jsonable(payload), indent=2))
    (out_dir / "attack_grid.md").write_text(markdown(results, base, settings, seconds))
    plot_grid(results, out_dir / "attack_grid.png")


def _settings_dict(settings: GridSettings) -> dict:
    raw = asdict(settings)
    return {k: [getattr(v, "value", v) for v in value] if isinstance(value, tuple) else value
            for k, value in raw.items()}


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
