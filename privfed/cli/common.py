"""What every ``privfed`` command shares: the config options, verbosity, and how a finished run is shown.

Every command that takes a config takes it the same way (:func:`config_options`): ``--config``, ``--set``,
``--help-config`` (every key, its default and meaning) and ``--print-config`` (the resolved config as the command
would run it, then exit). Every command takes ``-v``/``-q`` (:func:`verbosity_options`). Results go to stdout;
diagnostics (errors, warnings, progress bars, audit violations) to stderr. Exit status: 0 done, 1 the run failed, 2
bad input (refused before any result file is written), 3 an audit contradicts the accountant's ε.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_VIOLATION = 0, 1, 2, 3
EXIT_CODES = ("exit status: 0 done, 1 the run failed, 2 bad input (nothing written), 3 an audit contradicts the "
              "accountant's ε")


def verbosity_options() -> argparse.ArgumentParser:
    """``-v`` (info; ``-vv`` debug) and ``-q`` (errors only, no progress bars), for every command."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    group.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress bars")
    return parent


def config_options(default: str = "the built-in demo") -> argparse.ArgumentParser:
    """The options of a command that runs a config (``default``: what it runs without ``--config``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", type=Path, help=f"YAML config (default: {default})")
    parent.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set privacy.epsilon=3 (repeatable)")
    parent.add_argument("--help-config", action="store_true", help="list every config key with its default and "
                                                                   "meaning, then exit")
    parent.add_argument("--print-config", action="store_true", help="print the resolved config as this command "
                                                                    "would run it (YAML), then exit")
    return parent


def reusing_output_options(parser: argparse.ArgumentParser, default: str, reused: str) -> None:
    """``--out`` and ``--overwrite`` of a command that reuses its output directory (sweep, attack grid): run again
    there, it reuses what it finished (``reused``) and refuses, before anything runs, what another config made."""
    parser.add_argument("--out", type=Path, help=f"output directory (default: {default}); run again there, it "
                                                 f"reuses {reused}")
    parser.add_argument("--overwrite", action="store_true", help="start over what --out holds of another config "
                                                                 "(otherwise refused)")


def configure_logging(args: argparse.Namespace) -> None:
    """Log level from ``-v``/``-q`` (warnings by default). A process whose logging is already set up (a notebook,
    a test calling :func:`privfed.cli.main`) keeps its handlers; only an explicit flag changes its level."""
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", 0)
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    elif quiet or verbose:
        root.setLevel(level)


def shows_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--no-progress`` or ``-q``."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


def printed_config(args: argparse.Namespace, cfg) -> bool:
    """With ``--print-config``: print ``cfg`` (the config the command would run) and return True."""
    if not getattr(args, "print_config", False):
        return False
    from privfed.config import dump_yaml

    print(dump_yaml(cfg), end="")
    return True


def violation(message: str) -> int:
    """An audit contradicting the accountant: the line on stderr, and exit status 3."""
    print(f"privfed: VIOLATION: {message}", file=sys.stderr)
    return EXIT_VIOLATION


def print_run(name: str, results: dict, out: Path) -> None:
    """The per-round and summary tables, the model's answers and the notes of a finished run; writes rounds.png."""
    from privfed import rounds_table, summary_table
    from privfed.report.plots import plot_rounds

    plot_rounds(results, path=out / "rounds.png")
    print(f"\n## {name}: per round\n")
    print(rounds_table(results))
    print("\n## Summary\n")
    print(summary_table([results]))
    if results.get("generations"):
        print(f"\n## What the model answers after round {results['generations'][0]['round']}\n")
        for line in results["generations"]:
            print(f"- {_short(line['prompt'])} → {_short(line['generated'])}  "
                  f"(reference: {_short(line['reference'])})")
    for note in results["notes"]:
        print(f"note: {note}")
    written = "config.yaml, metrics.csv, ledger.jsonl, results.json, rounds.png"
    print(f"\nwrote {out}/ ({written}{', generations.jsonl' if results.get('generations') else ''})")


def _short(text: str, limit: int = 80) -> str:
    """One line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"
