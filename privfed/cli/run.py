"""``privfed run``: one experiment in this process (the demo without arguments), its tables and files."""
from __future__ import annotations

import argparse
from pathlib import Path

from privfed.cli.common import EXIT_CODES, print_run, printed_config, shows_progress
from privfed.errors import ConfigError

NAME = "run"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
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


def command(args: argparse.Namespace) -> int:
    from privfed import config as cfgmod
    from privfed.results import RunDirectory, unused_run_dir

    trackers = ()
    if args.report_to:  # checked before anything runs; the trackers' module imports torch, so only when asked
        from privfed.observe.tracking import parse_trackers

        trackers = parse_trackers(args.report_to)
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
    from privfed.observe.tracking import tracking_callbacks

    results = run(cfg, out, resume=bool(args.resume), overwrite=args.overwrite, progress=shows_progress(args),
                  callbacks=tracking_callbacks(trackers, cfg, out))
    print_run(cfg.name, results, out)
    return 0
