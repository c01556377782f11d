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
import io
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from privfed.attacks.grid_cells import CellResult, GridCell, GridSettings, cell_config, cells
from privfed.config import MALICIOUS_CODE, ExperimentConfig, builtin_config, to_dict
from privfed.errors import ConfigError
from privfed.results import jsonable, quality_key, refuse_replacing

TINY_WARM_START = 10  # rounds of honest training the built-in tiny grid's cells start from


def attack_grid_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """The built-in tiny grid's base config (``privfed/config/builtin/attack_grid.yaml``) with ``--set``
    overrides: the attack grid's default."""
    return builtin_config("attack_grid", overrides)


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
        from privfed.runners.warm_start import warm_start

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
    from privfed.report.attack_grid import markdown, plot_grid

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
