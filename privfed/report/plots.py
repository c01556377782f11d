"""Plots of quality against ε (sweeps) and of quality and ε per round (single runs); PNG via matplotlib."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: CLI, CI and notebooks alike
import matplotlib.pyplot as plt

from privfed.report.tables import quality_key


def _label(key: str) -> str:
    return "accuracy (higher is better)" if key == "eval_accuracy" else "perplexity (lower is better)"


def plot_privacy_utility(runs: list[dict], path: Path | None = None, ax=None):
    """Final quality against ε spent; the non-private run(s) dashed, the untrained model dotted."""
    key = quality_key(runs[0])
    private = sorted((float(r["final"]["epsilon"]), float(r["final"][key])) for r in runs
                     if math.isfinite(float(r["final"]["epsilon"])))
    public = [float(r["final"][key]) for r in runs if not math.isfinite(float(r["final"]["epsilon"]))]
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    if private:
        ax.plot([e for e, _ in private], [q for _, q in private], "o-", label="DP-SGD (record-level)")
        for e, q in private:
            ax.annotate(f"{q:.3f}", (e, q), textcoords="offset points", xytext=(4, 6), fontsize=8)
    for q in public:
        ax.axhline(q, linestyle="--", color="grey", label=f"no DP ({q:.3f})")
    initial = runs[0].get("initial", {}).get(key)
    if initial is not None:
        ax.axhline(float(initial), linestyle=":", color="C3", label=f"before training ({float(initial):.3f})")
    ax.set_xscale("log")
    if private:  # ticks at the measured ε, written plainly (not 3×10⁰)
        ax.set_xticks([e for e, _ in private], [f"{e:.3g}" for e, _ in private])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"ε spent (per client, δ = {float(runs[0]['final']['delta']):g})")
    ax.set_ylabel(_label(key))
    ax.set_title(runs[0]["config"]["name"].split("-eps")[0])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
            plt.close(fig)
    return ax


def plot_rounds(results: dict, path: Path | None = None):
    """Quality and ε per round, on twin axes."""
    key = quality_key(results)
    rounds = [r["round"] for r in results["rounds"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(rounds, [float(r[key]) for r in results["rounds"]], "o-", color="C0")
    ax.set_xlabel("round")
    ax.set_ylabel(_label(key), color="C0")
    eps = [float(r["epsilon"]) for r in results["rounds"]]
    if all(math.isfinite(e) for e in eps):
        ax2 = ax.twinx()
        ax2.plot(rounds, eps, "s--", color="C3")
        ax2.set_ylabel("ε spent", color="C3")
    ax.set_title(results["config"]["name"])
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
