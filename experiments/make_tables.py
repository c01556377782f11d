"""Regenerate the README's measured tables and figures: tuned, seeded sweeps under experiments/results/.

    python experiments/make_tables.py frontier   # quality against ε: regimes x aggregation methods (≈ 60 min)
    python experiments/make_tables.py gap        # where the DP gap comes from: clients and data per client (≈ 25 min)
    python experiments/make_tables.py chat instruct   # SmolLM2 tables (b) and (c): tuned, one seed (≈ 40 min)
    python experiments/make_tables.py --list     # the studies, their series and run counts, without running

Every series is a `privfed sweep`: with `--tune`, every ε (∞ included) runs the same trials and keeps the one with
the best validation quality (a split of the clients' training data); every cell is repeated over seeds and shown
as mean ± 95 % interval. Runs are cells: finished ones are reused and interrupted ones resumed, so a second call
continues where the first stopped (delete experiments/results/<study>/ to measure again). Two runs go at once, one
torch thread each. The files kept in git sit directly in experiments/results/ (<study>.md and its figures).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from privfed.config import ExperimentConfig, load_config  # noqa: E402
from privfed.report.plots import plot_client_epsilons, plot_privacy_utility, plot_quality_vs_bytes  # noqa: E402
from privfed.report.tables import markdown_table, sweep_markdown, sweep_rows, tuning_markdown  # noqa: E402
from privfed.runners.sweep import Sweep, SweepPlan, plan_runs, sweep  # noqa: E402
from privfed.runners.tuning import parse_tune  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
INF = math.inf
LR_GRID = "training.lr=0.005,0.02"  # the demo family's non-private optimum (0.005) and DP's (0.02)


@dataclass(frozen=True)
class Series:
    """One line of a study's figure: a config, its overrides and its sweep."""

    label: str
    config: str  # a file under experiments/
    overrides: tuple[str, ...]
    epsilons: tuple[float, ...]
    tune: tuple[str, ...] = ()
    seeds: int = 3

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-").replace("--", "-")

    def base(self) -> ExperimentConfig:
        return load_config(HERE / self.config, [*self.overrides, f"name={self.slug}"])

    def plan(self) -> SweepPlan:
        return SweepPlan(self.epsilons, tuple(parse_tune(t) for t in self.tune), self.seeds)


def _clients(k: int) -> tuple[str, ...]:
    """The gap study's (a): the same IID training data over k clients at equal compute (30 client-steps a round
    in all, so each client takes 30/k steps)."""
    return ("partition.scheme=iid", f"partition.num_clients={k}", f"training.local_steps={30 // k}")


def _per_client(n: int) -> tuple[str, ...]:
    """The gap study's (b): 5 IID clients keeping n training examples each, at the compute of (a)'s 5 clients."""
    return (*_clients(5), f"partition.max_client_examples={n}")


STUDIES: dict[str, tuple[Series, ...]] = {
    "frontier": (
        Series("LoRA · plain", "bbc_minilm_lora.yaml", (), (1, 3, 8, INF), (LR_GRID,)),
        Series("LoRA · secagg", "bbc_minilm_lora.yaml", ("aggregation=secagg",), (8, INF), (LR_GRID,), seeds=2),
        Series("soft prompt · plain", "bbc_minilm_lora.yaml", ("model.regime=prompt", "model.lora_freeze_a=false"),
               (8, INF), ("training.lr=0.02,0.1",), seeds=2),
    ),
    "gap": (
        *(Series(f"{k} client{'s' if k > 1 else ''}", "bbc_minilm_lora.yaml", _clients(k), (8, INF), seeds=2)
          for k in (1, 3, 5, 10)),
        *(Series(f"5 clients × {n} examples", "bbc_minilm_lora.yaml", _per_client(n), (8, INF), seeds=2)
          for n in (50, 100, 200)),
    ),
    "chat": (
        Series("SmolLM2 LoRA", "chatterbot_smollm2_lora.yaml", (), (3, 8, INF), ("training.lr=0.003,0.01",), seeds=1),
        Series("SmolLM2 soft prompt", "chatterbot_smollm2_prompt.yaml", (), (3, 8, INF), ("training.lr=0.01,0.03",),
               seeds=1),
    ),
    "instruct": (
        Series("SmolLM2 instruct", "chatterbot_smollm2_instruct.yaml", (), (8, INF), ("training.lr=0.003,0.01",),
               seeds=1),
    ),
}


def run_study(name: str, workers: int) -> list[Sweep]:
    sweeps = []
    for series in STUDIES[name]:
        print(f"\n# {name}: {series.label}", file=sys.stderr)
        sweeps.append(sweep(series.base(), series.plan(), RESULTS / name / series.slug, workers=workers))
    return sweeps


def write_study(name: str, sweeps: list[Sweep], seconds: float) -> str:
    """<name>.md (one table over the series, then each series' own table and trials) and the figures."""
    parts = [f"# {name}\n", f"`python experiments/make_tables.py {name}`: {seconds / 60:.0f} min on this machine "
             "(reused runs count as 0).\n", markdown_table(sweep_rows(sweeps)), ""]
    for s in sweeps:
        parts += [sweep_markdown(s), ""]
        if s.plan.tuned:
            parts += [tuning_markdown(s), ""]
    text = "\n".join(parts)
    (RESULTS / f"{name}.md").write_text(text)
    plot_privacy_utility(sweeps, path=RESULTS / f"{name}.png")
    if name == "frontier":
        plot_quality_vs_bytes(sweeps, path=RESULTS / f"{name}_bytes.png")
        private = [p for p in sweeps[0].points if p.private]
        plot_client_epsilons(private[-1].runs[0], path=RESULTS / f"{name}_client_epsilons.png")
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="*", help=f"any of {', '.join(STUDIES)} (default: frontier gap)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each (default 2)")
    parser.add_argument("--list", action="store_true", help="print each study's series and run counts, run nothing")
    args = parser.parse_args(argv)
    chosen = args.studies or ["frontier", "gap"]
    unknown = [s for s in chosen if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
    for name in chosen:
        if args.list:
            for s in STUDIES[name]:
                runs = len(plan_runs(s.base(), s.plan()))  # also validates every config
                print(f"{name}: {s.label}: {runs} runs ({', '.join(s.overrides) or 'as configured'})")
            continue
        started = time.perf_counter()
        sweeps = run_study(name, args.workers)
        print(write_study(name, sweeps, time.perf_counter() - started))


if __name__ == "__main__":
    main(sys.argv[1:])
