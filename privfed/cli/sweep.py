"""``privfed sweep``: runs per ε target (tuned, repeated over seeds, audited), then the ε/quality table and plot."""
from __future__ import annotations

import argparse
from pathlib import Path

from privfed.cli.audit import add_audit_options, settings_from
from privfed.cli.common import EXIT_CODES, printed_config, reusing_output_options, shows_progress, violation
from privfed.errors import ConfigError

NAME = "sweep"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    sweep = sub.add_parser("sweep", parents=[common, configured], epilog=EXIT_CODES,
                           help="runs per ε target (tuned at every ε with --tune, repeated with --seeds), then the "
                                "ε/quality table and plot")
    sweep.add_argument("--epsilons", help="comma-separated targets, inf = no DP (e.g. 1,3,8,inf; required)")
    sweep.add_argument("--tune", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="tune KEY over the values at every ε, inf included, selecting on a validation split of "
                            "the clients' training data (repeatable; KEY1/KEY2=A1/B1,A2/B2 moves keys together); "
                            "tuning is not privacy-accounted")
    sweep.add_argument("--seeds", type=int, default=1, help="runs per cell, seeds seed..seed+K-1 (default 1); "
                                                            "tables show mean ± 95%% interval")
    sweep.add_argument("--fixed-split", action="store_true", help="every seed on the same data split (only init, "
                                                                  "sampling and noise vary)")
    sweep.add_argument("--validation-fraction", type=float, default=None,
                       help="with --tune: share of each client's training examples held out for selection (0.1)")
    sweep.add_argument("--workers", type=int, default=1, help="runs at once, one torch thread each (default 1)")
    reusing_output_options(sweep, "runs/<name>-sweep", "its finished runs and resumes interrupted ones")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--audit", action="store_true", help="audit every run too (privfed audit): ε_lb beside ε, "
                                                            "membership AUC beside quality, and the ε_lb plot")
    add_audit_options(sweep)


def command(args: argparse.Namespace) -> int:
    from privfed.config import load_config
    from privfed.runners.sweep import SweepPlan, parse_epsilons, sweep
    from privfed.runners.tuning import parse_tune

    cfg = load_config(args.config, args.overrides)
    if printed_config(args, cfg):  # the base config: each run of the sweep sets its ε (and its trial, seed)
        return 0
    if not args.epsilons:
        raise ConfigError("--epsilons", "give the ε targets, e.g. --epsilons 1,3,8,inf")
    if args.validation_fraction is not None and not args.tune:
        raise ConfigError("--validation-fraction", "applies to tuned sweeps: add --tune")
    if args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    plan = SweepPlan(tuple(parse_epsilons(args.epsilons)), tuple(parse_tune(t) for t in args.tune), args.seeds,
                     args.fixed_split, 0.1 if args.validation_fraction is None else args.validation_fraction)
    settings = None
    if not args.audit and (args.fault != "none" or args.audits != "all" or args.profile != "as_configured"):
        raise ConfigError("--audit", "--audits, --fault and --profile apply to audited sweeps: add --audit")
    if args.audit:
        settings = settings_from(args)
    out = args.out or Path("runs") / f"{cfg.name}-sweep"
    result = sweep(cfg, plan, out, progress=shows_progress(args), audit=settings, workers=args.workers,
                   overwrite=args.overwrite)
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, seeds.csv, sweep.json, privacy_utility.png"
          + (", tuning.md" if plan.tuned else "") + (", audit_epsilon.png and each run's audit.md" if args.audit
                                                     else ""))
    violated = [r["config"]["name"] for r in result.runs if r.get("audit", {}).get("verdict") == "VIOLATION"]
    if violated:
        return violation(f"an audit contradicts the accountant's ε in {', '.join(violated)}")
    return 0
