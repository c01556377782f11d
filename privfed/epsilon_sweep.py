"""One run per ε target, then the ε/quality table (Markdown, CSV) and the plot; with audits, ε_lb beside ε."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from privfed.config import DpMode, ExperimentConfig
from privfed.errors import ConfigError
from privfed.report.plots import plot_privacy_utility
from privfed.report.tables import csv_table, markdown_table, summary_rows
from privfed.results import read_results

if TYPE_CHECKING:
    from privfed.audit.settings import AuditSettings


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


def config_for_epsilon(base: ExperimentConfig, epsilon: float) -> ExperimentConfig:
    tag = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    privacy = (dataclasses.replace(base.privacy, mode=DpMode.OFF) if math.isinf(epsilon) else
               dataclasses.replace(base.privacy, mode=DpMode.TARGET_EPSILON, epsilon=epsilon))
    return dataclasses.replace(base, name=f"{base.name}-eps{tag}", privacy=privacy)


def write_report(runs: list[dict], out_dir: Path) -> str:
    """table.md, table.csv and privacy_utility.png in ``out_dir`` (audited runs: also audit_epsilon.png); returns
    the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    table = markdown_table(rows)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "table.csv").write_text(csv_table(rows))
    plot_privacy_utility(runs, path=out_dir / "privacy_utility.png")
    if any(r.get("audit", {}).get("ε_lb") is not None for r in runs):  # audited with the one-run audit
        from privfed.report.plots import plot_audit_epsilon

        plot_audit_epsilon(runs, path=out_dir / "audit_epsilon.png")
    return table


def sweep(base: ExperimentConfig, epsilons: list[float], out_dir: Path, *, progress: bool = True,
          audit: AuditSettings | None = None) -> list[dict]:
    """Run each ε and write the report. A finished run of the same config is reused, an interrupted one resumed,
    and one of a different config (the sweep's base changed) is run again in its place. With ``audit``, each run
    is a ``privfed audit`` run (reused only when its audit had the same settings) and its results carry the audit's
    headline numbers under ``"audit"``."""
    from privfed.engines.inprocess import run
    from privfed.results import RESULTS, RunDirectory

    runs = []
    for epsilon in epsilons:
        cfg = config_for_epsilon(base, epsilon)
        run_dir = RunDirectory(out_dir / cfg.name)
        if audit is not None:
            runs.append(_audited(cfg, run_dir.path, audit, progress))
            continue
        same_config = run_dir.holds_run() and run_dir.config() == cfg
        if same_config and (run_dir.path / RESULTS).is_file():
            runs.append(read_results(run_dir.path))
            continue
        resumable = same_config and run_dir.has_checkpoint()  # a pre-0.2 pickle checkpoint is run over
        runs.append(run(cfg, run_dir.path, resume=resumable, overwrite=True, progress=progress))
    write_report(runs, out_dir)
    return runs


def _audited(cfg: ExperimentConfig, path: Path, settings: AuditSettings, progress: bool) -> dict:
    """An audit run's results with ``"audit"``: the audit's headline numbers (reused when already done)."""
    from privfed.audit.report import AUDIT_JSON, headline, read_report
    from privfed.audit.run import run_audit
    from privfed.audit.settings import audited_config
    from privfed.results import RESULTS, RunDirectory

    run_dir = RunDirectory(path)
    done = (run_dir.holds_run() and run_dir.config() == audited_config(cfg, settings)
            and (path / RESULTS).is_file() and (path / AUDIT_JSON).is_file()
            and read_report(path)["settings"] == settings.as_dict())
    if not done:
        run_audit(cfg, path, settings, overwrite=True, progress=progress)
    results = read_results(path)
    results["audit"] = headline(read_report(path))
    return results
