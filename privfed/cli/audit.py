"""``privfed audit``: run an experiment with its audits and print the audit table.

Exit status 0 when every audit is consistent with the accountant's ε, 3 when one contradicts it (a violation), 2
for bad input — so a CI job or a deployment script can gate on it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from privfed.cli.common import EXIT_CODES, printed_config, shows_progress, violation

NAME = "audit"


def add_audit_options(p: argparse.ArgumentParser) -> None:
    """The flags that make :class:`~privfed.audit.settings.AuditSettings` (shared by ``audit`` and ``sweep``)."""
    from privfed.audit.settings import AuditProfile, MechanismFault

    p.add_argument("--audits", default="all", help="comma-separated: one_run, membership, exposure, reconstruction "
                                                   "(default: all that apply to the model)")
    p.add_argument("--client", type=int, default=0, help="the audited client (default 0)")
    p.add_argument("--canaries", type=int, default=1000, help="Dirac canaries of the one-run audit (default 1000)")
    p.add_argument("--profile", choices=[m.value for m in AuditProfile], default=AuditProfile.AS_CONFIGURED.value,
                   help="overfit: 64 examples a client, 40 local steps a round (attacks visibly work without DP)")
    p.add_argument("--fault", choices=[f.value for f in MechanismFault], default=MechanismFault.NONE.value,
                   help="inject a DP-SGD bug the audit must flag (tests the auditor)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of bounds and intervals (0.95)")
    p.add_argument("--secret-digits", type=int, default=6, help="digits of the inserted secrets (|R| = 10^digits)")


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common, configured], epilog=EXIT_CODES,
                       help="run an experiment with privacy audits: one-run ε lower bound, membership inference, "
                            "canary exposure, reconstruction; exit 3 on a violation")
    p.add_argument("--out", type=Path, help="output directory (default: runs/<name>-audit, -2, -3... when taken)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_audit_options(p)


def settings_from(args: argparse.Namespace):
    from privfed.audit.settings import AuditProfile, AuditSettings, MechanismFault, parse_audits

    return AuditSettings(audits=parse_audits(args.audits), client=args.client, canaries=args.canaries,
                         confidence=args.confidence, fault=MechanismFault(args.fault),
                         profile=AuditProfile(args.profile), secret_digits=args.secret_digits)


def command(args: argparse.Namespace) -> int:
    from privfed.audit.settings import audited_config
    from privfed.config import load_config
    from privfed.results import unused_run_dir

    settings = settings_from(args)
    cfg = load_config(args.config, args.overrides)
    if printed_config(args, audited_config(cfg, settings)):
        return 0
    out = args.out or unused_run_dir(Path("runs") / f"{cfg.name}-audit")
    from privfed.audit.report import markdown
    from privfed.runners.audit import run_audit  # torch, transformers, Opacus: only once the input is valid

    report = run_audit(cfg, out, settings, overwrite=args.overwrite, progress=shows_progress(args))
    print()
    print(markdown(report))
    quality = ", ".join(f"{k} {v:.4g}" for k, v in report.quality.items() if isinstance(v, (int, float)))
    print(f"final model: {quality}; audit took {report.seconds:.0f} s")
    print(f"wrote {out}/ (audit.json, audit.md and the run's own files)")
    if report.violation:
        return violation("an audit contradicts the accountant's ε (see the rows marked VIOLATION)")
    return 0
