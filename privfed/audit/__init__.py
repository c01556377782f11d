"""Empirical privacy audits beside every ε: one-run ε lower bounds from canaries, membership inference, canary
exposure and reconstruction from what the server sees.

Typical use::

    import privfed
    from privfed.audit import AuditSettings, run_audit
    report = run_audit(privfed.load_config(), "runs/demo-audit", AuditSettings())
    print(report.violation, [r.value for r in report.rows])

The names below are imported on first use (torch, Opacus), so the CLI can validate its flags first.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_audit": "privfed.runners.audit:run_audit",
    "AuditSettings": "privfed.audit.settings:AuditSettings",
    "AuditKind": "privfed.audit.settings:AuditKind",
    "AuditProfile": "privfed.audit.settings:AuditProfile",
    "MechanismFault": "privfed.audit.settings:MechanismFault",
    "AuditReport": "privfed.audit.report:AuditReport",
    "Verdict": "privfed.audit.report:Verdict",
    "markdown": "privfed.audit.report:markdown",
    "repeated_one_run": "privfed.audit.repeat:repeated_one_run",
    "one_run_bound": "privfed.audit.bounds:one_run_bound",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'privfed.audit' has no attribute {name!r}")
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)
