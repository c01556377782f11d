"""Regenerate the README's measured tables and figures: tuned, seeded sweeps under experiments/results/.

    python experiments/make_tables.py recipe     # the DP fine-tuning recipe's options at ε = 8 (≈ 26 min)
    python experiments/make_tables.py frontier   # quality against ε, LoRA, tuned, 3 seeds (≈ 40 min)
    python experiments/make_tables.py regimes    # LoRA under secagg and the soft prompt beside it (≈ 30 min)
    python experiments/make_tables.py gap        # where the DP gap comes from: clients and data per client (≈ 26 min)
    python experiments/make_tables.py chat instruct   # SmolLM2 tables (c) and (d): tuned, one seed (≈ 40 min)
    python experiments/make_tables.py --list     # the studies, their series and run counts, without running

Every series is a `privfed sweep`: with `--tune`, every ε (∞ included) runs the same trials and keeps the one with
the best validation quality (a split of the clients' training data); every cell is repeated over seeds and shown
as mean ± 95 % interval. Runs are cells: finished ones are reused and interrupted ones resumed, so a second call
continues where the first stopped (delete experiments/results/<study>/ to measure again). Two runs go at once, one
torch thread each. The files kept in git sit directly in experiments/results/ (<study>.md and its figures).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from privfed.config import ExperimentConfig, load_config  # noqa: E402
from privfed.report.plots import plot_client_epsilons, plot_privacy_utility, plot_quality_vs_bytes  # noqa: E402
from privfed.report.tables import markdown_table, sweep_markdown, sweep_rows, tuning_markdown  # noqa: E402
from privfed.runners.sweep import Sweep, SweepPlan, execute_jobs, plan_runs, select, write_report  # noqa: E402
from privfed.runners.tuning import parse_tune  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
INF = math.inf
LR_GRID = "training.lr=0.01,0.03"  # around the demo family's non-private (0.005-0.01) and DP (0.03) optima


@dataclass(frozen=True)
class Series:
    """One line of a study's figure: a config, its overrides and its sweep."""

    label: str
    config: str  # a file under experiments/
    overrides: tuple[str, ...]
    epsilons: tuple[float, ...]
    tune: tuple[str, ...] = ()
    seeds: int = 3
    public: tuple[str, ...] = ()  # untuned studies: overrides of the ∞ runs (the frontier tuner's pick for no DP)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label.lower()).strip("-").replace("--", "-")

    def base(self, public: bool = False) -> ExperimentConfig:
        extra = self.public if public else ()
        return load_config(HERE / self.config, [*self.overrides, *extra, f"name={self.slug}"])

    def plans(self) -> list[tuple[ExperimentConfig, SweepPlan]]:
        """The sweeps this series runs: one, or (with ``public``) the private ε with the base's settings and ∞
        with the public overrides."""
        axes = tuple(parse_tune(t) for t in self.tune)
        if not self.public:
            return [(self.base(), SweepPlan(self.epsilons, axes, self.seeds))]
        private = tuple(e for e in self.epsilons if math.isfinite(e))
        return [(self.base(), SweepPlan(private, axes, self.seeds)),
                (self.base(public=True), SweepPlan((INF,), axes, self.seeds))]


GAP_PUBLIC = ("training.lr=0.01",)  # the frontier tuner's pick without DP (the DP runs keep the config's 0.03)


def _clients(k: int) -> tuple[str, ...]:
    """The gap study's (a): the same IID training data over k clients at equal compute: 2 rounds of 30
    client-steps of 64 examples (each client 30/k steps a round), 3,840 examples processed as in the demo."""
    return ("partition.scheme=iid", f"partition.num_clients={k}", "training.rounds=2",
            f"training.local_steps={30 // k}")


def _per_client(n: int) -> tuple[str, ...]:
    """The gap study's (b): 5 IID clients keeping n training examples each, at the compute of (a)'s 5 clients."""
    return (*_clients(5), f"partition.max_client_examples={n}")


# The DP fine-tuning recipe's options against today's default, at equal compute (examples processed): FFA-LoRA
# (Sun et al. 2024), a larger logical batch with fewer steps and noise re-calibrated for the same ε (Li et al.
# 2022), DP-AdamBC (Tang et al. 2024, its own learning rate: it no longer divides by the noise's scale).
RECIPE = ("model.lora_freeze_a/training.optimizer/training.lr/training.batch_size/training.local_steps="
          "false/adam/0.02/32/8,true/adam/0.02/32/8,false/adam/0.03/64/4,true/adam/0.03/64/4,"
          "false/adam_bc/0.0005/32/8")

STUDIES: dict[str, tuple[Series, ...]] = {
    "recipe": (Series("recipe at ε = 8", "bbc_minilm_lora.yaml", (), (8,), (RECIPE,)),),
    "frontier": (Series("LoRA · plain", "bbc_minilm_lora.yaml", (), (1, 3, 8, INF), (LR_GRID,)),),
    "regimes": (
        Series("LoRA · secagg", "bbc_minilm_lora.yaml", ("aggregation=secagg",), (8, INF), (LR_GRID,), seeds=2),
        Series("soft prompt · plain", "bbc_minilm_lora.yaml", ("model.regime=prompt",), (8, INF),
               ("training.lr=0.02,0.1",), seeds=2),
    ),
    "gap": (
        *(Series(f"{k} client{'s' if k > 1 else ''}", "bbc_minilm_lora.yaml", _clients(k), (8, INF), seeds=1,
                 public=GAP_PUBLIC) for k in (1, 3, 5, 10)),
        *(Series(f"5 clients × {n} examples", "bbc_minilm_lora.yaml", _per_client(n), (8, INF), seeds=1,
                 public=GAP_PUBLIC) for n in (50, 100, 200)),
        # central DP at the learning rate that suits it (one client takes every step with little noise per
        # averaged gradient, so lr 0.03 overshoots as it does without DP), 3 seeds: the literature's comparison
        Series("1 client, lr 0.01, 3 seeds", "bbc_minilm_lora.yaml", (*_clients(1), "training.lr=0.01"), (8, INF),
               seeds=3),
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


def gap_rows(sweeps: list[Sweep]) -> list[dict]:
    """The gap study's table: per series, the private and non-private quality, the gap, and what each client's
    DP-SGD looked like (examples, sampling rate, σ) at the compute every series shares."""
    rows = []
    for s in sweeps:
        private = next(p for p in s.points if p.private)
        public = s.nonprivate
        cfg, clients = private.runs[0]["config"], private.runs[0]["privacy"]["clients"]
        t = cfg["training"]
        rows.append({
            "series": s.label, "clients": len(clients),
            "examples/client": round(sum(c["examples"] for c in clients) / len(clients)),
            "q": f"{sum(c['sample_rate'] for c in clients) / len(clients):.3f}",
            "σ": f"{sum(c['noise_multiplier'] for c in clients) / len(clients):.2f}",
            "steps/client": t["rounds"] * t["local_steps"],
            "client-steps": t["rounds"] * t["local_steps"] * len(clients),
            "examples processed": t["rounds"] * t["local_steps"] * len(clients) * t["batch_size"],
            f"ε = {private.target_epsilon:g}": private.quality.text(3),
            "no DP": public.quality.text(3) if public else "–",
            "gap (points)": f"{100 * (public.quality.mean - private.quality.mean):.1f}" if public else "–",
        })
    return rows


def plot_gap(sweeps: list[Sweep]) -> None:
    """gap_study.png: (a) quality against the number of clients, (b) against examples per client."""
    import matplotlib.pyplot as plt

    from privfed.report.plots import plot_quality_against_setting

    by_label = {s.label: s for s in sweeps}
    clients = [(float(k), by_label[f"{k} client{'s' if k > 1 else ''}"]) for k in (1, 3, 5, 10)]
    sizes = [(float(n), by_label[f"5 clients × {n} examples"]) for n in (50, 100, 200)]
    five = by_label["5 clients"]  # (b)'s "all": each of 5 clients keeps its whole share
    whole_share = sum(c["examples"] for c in five.points[0].runs[0]["privacy"]["clients"]) / 5
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    plot_quality_against_setting(clients, xlabel="clients sharing the same data (equal compute)", ax=axes[0])
    plot_quality_against_setting([*sizes, (round(whole_share), five)],
                                 xlabel="training examples per client (5 clients, equal compute)", ax=axes[1])
    axes[0].set_title("(a) one dataset over k clients")
    axes[1].set_title("(b) less data per client")
    fig.tight_layout()
    fig.savefig(RESULTS / "gap_study.png")
    plt.close(fig)


def run_study(name: str, workers: int) -> list[Sweep]:
    """Every run of every series in one pool of ``workers`` processes, then each series' sweep and its report in
    results/<name>/<series>/ (a series with public overrides: its ∞ runs in <series>/no-dp/, merged into one)."""
    sweeps: list[tuple[Series, list[tuple[ExperimentConfig, SweepPlan, Path, list]]]] = []
    jobs = []
    for series in STUDIES[name]:
        parts = []
        for i, (base, plan) in enumerate(series.plans()):
            out = RESULTS / name / series.slug / ("no-dp" if i else "")
            specs = plan_runs(base, plan)
            jobs += [(s.config, out / s.config.name) for s in specs]
            parts.append((base, plan, out, specs))
        sweeps.append((series, parts))
    print(f"{name}: {len(jobs)} runs", file=sys.stderr)
    outcomes = execute_jobs(jobs, workers=workers)
    results = []
    for series, parts in sweeps:
        found = [select(series.label, plan, specs, outcomes) for _, plan, _, specs in parts]
        for result, (_, _, out, _) in zip(found, parts):
            write_report(result, out)
        merged = found[0] if len(found) == 1 else dataclasses.replace(
            found[0], points=tuple(p for f in found for p in f.points), runs=tuple(r for f in found for r in f.runs),
            failed=tuple(x for f in found for x in f.failed))
        results.append(merged)
    return results


def write_study(name: str, sweeps: list[Sweep], workers: int) -> str:
    """<name>.md (one table over the series, then each series' own table and trials) and the figures.

    The cost line sums the seconds each run recorded, so a regenerated report (every run reused) still states what
    the study cost to measure."""
    runs = [r for s in sweeps for r in s.runs]
    run_minutes = sum(float(r["seconds"]) for r in runs) / 60
    parts = [f"# {name}\n", f"`python experiments/make_tables.py {name}`: {len(runs)} runs, {run_minutes:.0f} min "
             f"of run time on this machine (≈ {run_minutes / workers:.0f} min with {workers} at once).\n",
             markdown_table(gap_rows(sweeps) if name == "gap" else sweep_rows(sweeps)), ""]
    for s in sweeps:
        parts += [sweep_markdown(s), ""]
        if s.plan.tuned:
            parts += [tuning_markdown(s), ""]
    text = "\n".join(parts)
    (RESULTS / f"{name}.md").write_text(text)
    plot_privacy_utility(sweeps, path=RESULTS / f"{name}.png")
    if name in ("frontier", "regimes"):
        plot_quality_vs_bytes(sweeps, path=RESULTS / f"{name}_bytes.png")
        private = [p for p in sweeps[0].points if p.private]
        plot_client_epsilons(private[-1].runs[0], path=RESULTS / f"{name}_client_epsilons.png")
    if name == "gap":
        plot_gap(sweeps)
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
                runs = sum(len(plan_runs(base, plan)) for base, plan in s.plans())  # also validates every config
                print(f"{name}: {s.label}: {runs} runs ({', '.join(s.overrides) or 'as configured'})")
            continue
        sweeps = run_study(name, args.workers)
        print(write_study(name, sweeps, args.workers))


if __name__ == "__main__":
    main(sys.argv[1:])
