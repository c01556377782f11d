"""``privfed table``: the ε/quality table (and every run's row) rebuilt from saved run or sweep directories."""
from __future__ import annotations

import argparse
from pathlib import Path

from privfed.errors import ConfigError

NAME = "table"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    table = sub.add_parser("table", parents=[common],
                           help="rebuild the ε/quality table (mean ± 95%% interval over seeds, and every run) from "
                                "saved run or sweep directories")
    table.add_argument("dirs", nargs="+", type=Path, help="run directories (or sweep directories)")
    table.add_argument("--rounds", action="store_true", help="also print each run's per-round table")
    table.add_argument("--csv", action="store_true", help="also print every run's row as CSV")


def command(args: argparse.Namespace) -> int:
    from privfed import rounds_table
    from privfed.report.tables import csv_table, markdown_table, sweep_markdown
    from privfed.results import RESULTS
    from privfed.run_result import read_results
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
