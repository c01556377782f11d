"""``privfed attack-grid``: attacks x defences x aggregation methods x privacy settings, one run per cell, then the
table (attack_grid.md) and the heat map (attack_grid.png).

Exit status 0 when every cell ran or was refused by design, 1 when a cell failed, 2 for bad input.
"""
from __future__ import annotations

import argparse
import enum
import sys
from pathlib import Path

from privfed.cli.common import EXIT_CODES, config_options, printed_config, reusing_output_options, shows_progress

NAME = "attack-grid"
TINY_GRID = "the built-in tiny grid, ~10 minutes on 2 CPU cores"


def add_parser(sub, common: argparse.ArgumentParser, configured: argparse.ArgumentParser) -> None:
    """``configured`` is replaced by the grid's own config options (its default is the built-in tiny grid)."""
    from privfed.attacks.grid_cells import GridSettings

    d = GridSettings()
    p = sub.add_parser("attack-grid", parents=[common, config_options(TINY_GRID)], epilog=EXIT_CODES,
                       help="poisoning attacks x defences x {plain, secagg, grouped secagg} x {no DP, ε}: clean "
                            "quality, attack success, survival, persistence")
    p.add_argument("--demo", action="store_true", help="use the demo's MiniLM/LoRA config instead (minutes a cell)")
    p.add_argument("--attacks", default=",".join(a.value for a in d.attacks), help="comma-separated attack kinds")
    p.add_argument("--defences", default=",".join(x.value for x in d.defences),
                   help="comma-separated: none, norm_bound, median, trimmed_mean, krum, multi_krum, centered_clip, "
                        "range_check, client_clip")
    p.add_argument("--aggregations", default=",".join(x.value for x in d.aggregations),
                   help="comma-separated: plain, secagg, grouped_secagg")
    p.add_argument("--epsilons", default="inf,8", help="comma-separated ε targets, inf = no DP (default inf,8)")
    p.add_argument("--groups", type=int, default=d.groups, help=f"grouped secagg: groups a round ({d.groups})")
    p.add_argument("--client-clip", type=float, default=d.client_clip,
                   help=f"client_clip: the L2 norm honest code clips to ({d.client_clip})")
    p.add_argument("--warm-start-rounds", type=int, default=-1,
                   help="cells start from the model of an honest run of this many rounds (default: 10 for the "
                        "built-in tiny grid, whose random model must first learn; 0 otherwise)")
    p.add_argument("--workers", type=int, default=0, help="cells run in parallel (0 = min(2, CPU cores))")
    reusing_output_options(p, "runs/<name>-attack-grid", "its finished cells")
    p.add_argument("--no-progress", action="store_true")


def _choices(flag: str, text: str, kind: type[enum.Enum]) -> tuple:
    from privfed.errors import ConfigError

    allowed = {m.value: m for m in kind}
    picked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in picked if p not in allowed]
    if unknown or not picked:
        raise ConfigError(flag, f"got {', '.join(unknown) or 'nothing'}; allowed: {', '.join(allowed)}")
    return tuple(allowed[p] for p in dict.fromkeys(picked))


def command(args: argparse.Namespace) -> int:
    from privfed.attacks.grid_cells import GridAggregation, GridDefence, GridSettings
    from privfed.runners.attack_grid import TINY_WARM_START, attack_grid_config, default_workers, run_grid
    from privfed.config import AttackKind, load_config
    from privfed.runners.sweep import parse_epsilons
    from privfed.errors import ConfigError

    if args.demo and args.config:
        raise ConfigError("--demo", "give either --demo or --config, not both")
    if args.groups < 2:
        raise ConfigError("--groups", f"must be >= 2, got {args.groups}")
    if not args.client_clip > 0:
        raise ConfigError("--client-clip", f"must be > 0, got {args.client_clip}")
    builtin = not (args.config or args.demo)
    warm = args.warm_start_rounds if args.warm_start_rounds >= 0 else (TINY_WARM_START if builtin else 0)
    settings = GridSettings(attacks=_choices("--attacks", args.attacks, AttackKind),
                            defences=_choices("--defences", args.defences, GridDefence),
                            aggregations=_choices("--aggregations", args.aggregations, GridAggregation),
                            epsilons=tuple(parse_epsilons(args.epsilons)), groups=args.groups,
                            client_clip=args.client_clip, workers=args.workers or default_workers(),
                            warm_start_rounds=warm)
    if not builtin:
        base = load_config(args.config, args.overrides)  # no --config: the demo
    else:
        base = attack_grid_config(args.overrides)
    if printed_config(args, base):
        return 0
    out = args.out or Path("runs") / f"{base.name}-attack-grid"
    from tqdm import tqdm

    from privfed.attacks.grid_cells import cells

    with tqdm(total=len(cells(settings)), desc="attack grid", unit="cell", disable=not shows_progress(args)) as bar:
        def on_cell(result) -> None:
            bar.set_postfix_str(f"{result.cell.label}: {result.status}", refresh=False)
            bar.update(1)

        results = run_grid(base, out, settings, on_cell, overwrite=args.overwrite)
    print((out / "attack_grid.md").read_text())
    print(f"wrote {out}/attack_grid.md, attack_grid.json, attack_grid.png and each cell's run in {out}/cells/")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"privfed: cell {r.cell.label} failed: {r.reason}", file=sys.stderr)
    return 1 if failed else 0
