"""``privfed run | sweep | audit | attack-grid | table | keygen | flower``: the command-line face of privfed.

Every command follows one convention (:mod:`privfed.cli_common`): the same config options, ``-v``/``-q``, results
on stdout and diagnostics on stderr. Bad input (unknown key, wrong type, impossible value, missing asset) is one
line on stderr and exit status 2, detected before any result file is written; a renamed key is answered with its
new name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import privfed
from privfed.cli_common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_USAGE,
    config_options,
    configure_logging,
    print_run,
    printed_config,
    shows_progress,
    verbosity_options,
    violation,
)
from privfed.errors import ConfigError, MissingAssetError, PrivfedError

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privfed", description="Federated DP-SGD training of language models.",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"privfed {privfed.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common, configured = verbosity_options(), config_options()
    run = sub.add_parser("run", parents=[common, configured], epilog=EXIT_CODES,
                         help="run one experiment (default: the 2-minute MiniLM/LoRA/DP demo)")
    run.add_argument("--out", type=Path, help="output directory (default: runs/<name>, or runs/<name>-2, -3... "
                                              "when taken)")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--report-to", default="", metavar="TRACKERS",
                     help="also log every round to tensorboard and/or mlflow (comma-separated; optional extras: "
                          "./install.sh --tracking): TensorBoard files in OUT/tensorboard, MLflow at its tracking URI")
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
    sweep.add_argument("--out", type=Path, help="output directory (default: runs/<name>-sweep); a sweep run again "
                                                "there reuses its finished runs and resumes interrupted ones")
    sweep.add_argument("--overwrite", action="store_true", help="start over runs in --out whose config changed "
                                                                "(otherwise refused)")
    sweep.add_argument("--no-progress", action="store_true")
    table = sub.add_parser("table", parents=[common], help="rebuild the ε/quality table (mean ± 95%% interval over seeds, and every "
                                         "run) from saved run or sweep directories")
    table.add_argument("dirs", nargs="+", type=Path, help="run directories (or sweep directories)")
    table.add_argument("--rounds", action="store_true", help="also print each run's per-round table")
    table.add_argument("--csv", action="store_true", help="also print every run's row as CSV")
    keygen = sub.add_parser("keygen", parents=[common], help="write a Paillier key pair for aggregation.key_file (the clients' "
                                           "shared secret: give it to the clients, never to the server) and its "
                                           "public key KEY.pub (the server's, over Flower)")
    keygen.add_argument("path", type=Path, help="key file to write (readable by its owner only)")
    keygen.add_argument("--bits", type=int, default=3072, help="modulus bits: 2048, 3072 (default) or 4096")
    keygen.add_argument("--overwrite", action="store_true", help="replace an existing key file")
    from privfed.attack_cli import add_attack_grid_parser
    from privfed.audit_cli import add_audit_options, add_audit_parser
    from privfed.flower_cli import add_flower_parser

    sweep.add_argument("--audit", action="store_true", help="audit every run too (privfed audit): ε_lb beside ε, "
                                                            "membership AUC beside quality, and the ε_lb plot")
    add_audit_options(sweep)
    add_audit_parser(sub, [common, configured])
    add_attack_grid_parser(sub, [common, config_options("the built-in tiny grid, ~10 minutes on 2 CPU cores")])
    add_flower_parser(sub, common, configured)
    return parser


def _run(args: argparse.Namespace) -> int:
    from privfed import config as cfgmod
    from privfed.results import RunDirectory, unused_run_dir

    from privfed.observe.tracking import parse_trackers, tracking_callbacks

    trackers = parse_trackers(args.report_to) if args.report_to else ()
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume", "takes the config saved in DIR; drop --config/--set")
        run_dir = RunDirectory(args.resume)
        if run_dir.load_checkpoint() is None:
            raise ConfigError("--resume", f"{args.resume} holds no checkpoint to resume")
        cfg, out = run_dir.config(), args.resume
    else:
        cfg = cfgmod.load_config(args.config, args.overrides)
        out = args.out or unused_run_dir(Path("runs") / cfg.name)
    if printed_config(args, cfg):
        return 0
    from privfed.engines.inprocess import run  # torch, transformers, Opacus: only once the config is valid

    results = run(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=shows_progress(args),
                  callbacks=tracking_callbacks(trackers, cfg, out))
    print_run(cfg.name, results, out)
    return 0


def _sweep(args: argparse.Namespace) -> int:
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
        from privfed.audit_cli import settings_from

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


def _table(args: argparse.Namespace) -> int:
    from privfed import rounds_table
    from privfed.report.tables import csv_table, markdown_table, sweep_markdown
    from privfed.results import RESULTS, read_results
    from privfed.runners.sweep import is_sweep_dir, load_sweep, summarize

    for d in args.dirs:
        if is_sweep_dir(d):
            result = load_sweep(d)
        else:
            found = [d] if (d / RESULTS).is_file() else sorted(p.parent for p in d.glob(f"*/{RESULTS}"))
            if not found:
                raise ConfigError(str(d), "holds no results.json (nor do its sub-directories)")
            result = summarize([read_results(p) for p in found])
        print(sweep_markdown(result))
        print(f"\n### {result.label}: every run\n")
        print(markdown_table(result.seed_rows()))
        if args.csv:
            print("\n" + csv_table(result.seed_rows()), end="")
        if args.rounds:
            for res in result.runs:
                print(f"\n## {res['config']['name']}\n\n{rounds_table(res)}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from privfed.config import PAILLIER_KEY_BITS
    from privfed.secure.paillier_keys import PaillierKey, public_key_path, security_note

    if args.bits not in PAILLIER_KEY_BITS:
        raise ConfigError("--bits", f"must be one of {', '.join(map(str, PAILLIER_KEY_BITS))}, got {args.bits}")
    if args.path.exists() and not args.overwrite:
        raise ConfigError(str(args.path), "exists; pass --overwrite to replace it (runs that used it cannot be "
                                          "decrypted with a new key)")
    key = PaillierKey.generate(args.bits)
    key.save(args.path)
    public = key.public().save(public_key_path(args.path))
    bits = "" if key.bits == 3072 else f" --set aggregation.key_bits={key.bits}"
    print(f"wrote {args.path}: {key.bits}-bit Paillier key pair {key.fingerprint} ({security_note(key.bits)}), and "
          f"its public key {public}")
    print(f"use it with: --set aggregation=paillier --set aggregation.key_file={args.path}{bits}")
    print(f"over Flower: the server's config takes aggregation.key_file={public}; each node gets {args.path} "
          f"as --node-config paillier-key")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes PNG files and never opens a window, whatever MPLBACKEND says
    configure_logging(args)
    if getattr(args, "help_config", False):
        from privfed.config import help_lines

        print("\n".join(help_lines()))
        return 0
    try:
        if args.command == "flower":
            from privfed.flower_cli import flower_command

            return flower_command(args)
        if args.command == "audit":
            from privfed.audit_cli import audit_command

            return audit_command(args)
        if args.command == "attack-grid":
            from privfed.attack_cli import attack_grid_command

            return attack_grid_command(args)
        return {"run": _run, "sweep": _sweep, "table": _table, "keygen": _keygen}[args.command](args)
    except (ConfigError, MissingAssetError) as err:
        kind = "config error" if isinstance(err, ConfigError) else "missing asset"
        print(f"privfed: {kind}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PrivfedError as err:
        print(f"privfed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
