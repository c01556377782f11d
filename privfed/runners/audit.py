"""``privfed audit``: one instrumented run of an experiment, then every requested audit of it.

The run is an ordinary run (same driver, clients, back-end and callbacks as ``privfed run``; in process, or over
Flower with the audited client on a node that agreed to carry it) whose audited client holds members and held-out
non-members, inserted secrets (causal LMs) and Dirac canaries; the
:class:`~privfed.audit.observer.AuditObserver` round hook records what its upload, the server's reading of it and
the sum looked like. After the last round the final model is scored. Every finding is a row of an
:class:`~privfed.audit.report.AuditReport` with a verdict against the accountant's ε for that client
(:mod:`privfed.audit.scoring`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from privfed.audit.observer import AuditObserver
from privfed.audit.report import AuditReport, AuditRow, write_report
from privfed.audit.scoring import (
    check_auditable,
    claimed_epsilon,
    exposure_rows,
    membership_rows,
    one_run_rows,
    reconstruction_rows,
)
from privfed.audit.settings import AuditKind, AuditSettings, audited_config
from privfed.audit.target import AuditTarget, prepare_target
from privfed.config import Aggregation, ExperimentConfig
from privfed.engines.inprocess import InProcessClients
from privfed.engines.runner import run_rounds
from privfed.federation.setup import Federation, build_federation
from privfed.privacy.ledger import Ledger
from privfed.server.driver import ClientSide


def run_audit(cfg: ExperimentConfig, out_dir: Path, settings: AuditSettings | None = None, *,
              overwrite: bool = False, progress: bool = True) -> AuditReport:
    """Run ``cfg`` (after ``settings.profile``, named ``<name>-audit``) in this process with the audited client
    instrumented, audit it, write audit.json and audit.md beside the run's own files in ``out_dir``; returns the
    report. Settings that cannot work with ``cfg`` are refused (ConfigError) before anything is written."""
    settings = settings or AuditSettings()
    return audit_run(audited_config(cfg, settings), out_dir, settings, overwrite=overwrite, progress=progress)


def audit_run(cfg: ExperimentConfig, out_dir: Path, settings: AuditSettings, *, overwrite: bool = False,
              progress: bool = True, make_clients: Callable[[Federation, Ledger], ClientSide] | None = None,
              extra_results: Callable[[dict], dict] | None = None) -> AuditReport:
    """:func:`run_audit` of a config that is already :func:`~privfed.audit.settings.audited_config`'s (a Flower
    run's, whose nodes parse that config), reaching the clients through ``make_clients`` (default: in this
    process; over Flower the audited node carries the target and reports its update)."""
    started = time.perf_counter()
    check_auditable(cfg)
    out_dir = Path(out_dir)
    observer = AuditObserver()
    built: dict[str, tuple[Federation, AuditTarget]] = {}

    def build(config: ExperimentConfig) -> Federation:
        fed = build_federation(config)
        target = prepare_target(fed, settings)
        observer.watch(target, fed.num_trainable, hides_uploads=config.aggregation.method is not Aggregation.PLAIN)
        built["run"] = (fed, target)
        return fed

    results = run_rounds(cfg, out_dir, build, make_clients or InProcessClients, overwrite=overwrite,
                         progress=progress, callbacks=(observer,), extra_results=extra_results)
    fed, target = built["run"]
    claimed = claimed_epsilon(cfg, results, target.client)
    rows: list[AuditRow] = []
    if settings.wants(AuditKind.ONE_RUN):
        rows += one_run_rows(cfg, settings, target, observer, claimed)
    final = observer.final_vector if observer.final_vector is not None else fed.initial_vector
    if settings.wants(AuditKind.MEMBERSHIP):
        rows += membership_rows(fed, target, final, claimed, settings.confidence)
    if settings.wants(AuditKind.EXPOSURE):
        rows += exposure_rows(fed, target, final, claimed, settings)
    if settings.wants(AuditKind.RECONSTRUCTION):
        rows += reconstruction_rows(fed, target, observer, claimed)
    report = AuditReport(name=cfg.name, client=target.client, claimed_epsilon=claimed, delta=cfg.privacy.delta,
                         confidence=settings.confidence, fault=settings.fault.value, rows=tuple(rows),
                         quality={k: v for k, v in results["final"].items() if k.startswith(("eval_", "fed_"))},
                         settings=settings.as_dict(),
                         seconds=time.perf_counter() - started)
    write_report(report, out_dir)
    return report
