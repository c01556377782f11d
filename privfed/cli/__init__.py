"""``privfed run | sweep | audit | attack-grid | table | keygen | flower``: the command-line face of privfed.

One module per command, each registering its parser (``add_parser``) and running it (``command``); :data:`COMMANDS`
is the registry the ``privfed`` entry point reads, so a command is added in one place. Every command follows one
convention (:mod:`privfed.cli.common`): the same config options, ``-v``/``-q``, results on stdout and diagnostics
on stderr. Bad input (unknown key, wrong type, impossible value, missing asset) is one line on stderr and exit
status 2, detected before any result file is written; a renamed key is answered with its new name. Nothing here
imports torch before the input is valid.
"""
from __future__ import annotations

import argparse
import sys

import privfed
from privfed.cli import attack_grid, audit, flower, keygen, run, sweep, table
from privfed.cli.common import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_USAGE,
    config_options,
    configure_logging,
    verbosity_options,
)
from privfed.errors import ConfigError, MissingAssetError, PrivfedError

COMMANDS = {module.NAME: module for module in (run, sweep, audit, attack_grid, table, keygen, flower)}


def parser() -> argparse.ArgumentParser:
    """The ``privfed`` parser: every registered command under it."""
    top = argparse.ArgumentParser(prog="privfed", description="Federated DP-SGD training of language models.",
                                  epilog=EXIT_CODES)
    top.add_argument("--version", action="version", version=f"privfed {privfed.__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    common, configured = verbosity_options(), config_options()
    for module in COMMANDS.values():
        module.add_parser(sub, common, configured)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes PNG files and never opens a window, whatever MPLBACKEND says
    configure_logging(args)
    if getattr(args, "help_config", False):
        from privfed.config import help_lines

        print("\n".join(help_lines()))
        return 0
    try:
        return COMMANDS[args.command].command(args)
    except (ConfigError, MissingAssetError) as err:
        kind = "config error" if isinstance(err, ConfigError) else "missing asset"
        print(f"privfed: {kind}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except PrivfedError as err:
        print(f"privfed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
