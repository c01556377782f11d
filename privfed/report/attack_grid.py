"""The attack grid as people read it: pivot tables (clean quality, attack success) per privacy setting, every
cell's metrics, and a heat map."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from privfed.attacks.grid_cells import TARGETED, CellResult, GridAggregation, GridSettings
from privfed.config import ExperimentConfig


def _eps(epsilon: float) -> str:
    return "no DP" if math.isinf(epsilon) else f"ε = {epsilon:g}"


def _columns(results: list[CellResult]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in results:
        key = (r.cell.aggregation.value, r.cell.defence.value)
        if key not in seen:
            seen.append(key)
    return seen


def _value(r: CellResult, key: str, beside: str = "") -> str:
    """A cell's metric (``beside``: a second one in brackets), or why there is none."""
    if r.status == "refused":
        return "refused"
    if r.status == "failed":
        return "failed"
    value = r.metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    other = r.metrics.get(beside) if beside else None
    shown = isinstance(other, (int, float)) and not math.isnan(other)  # e.g. no honest input shares the sum
    return f"{value:.2f}" + (f" ({other:.2f})" if shown else "")


def _pivot(results: list[CellResult], epsilon: float, key: str, attacks: list, beside: str = "") -> list[str]:
    columns = _columns(results)
    lines = ["| attack | " + " | ".join(f"{a} · {d}" for a, d in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for attack in attacks:
        row = {(r.cell.aggregation.value, r.cell.defence.value): r for r in results
               if r.cell.attack is attack and r.cell.epsilon == epsilon}
        lines.append(f"| {attack.value} | " + " | ".join(_value(row[c], key, beside) if c in row else ""
                                                        for c in columns) + " |")
    return lines


def markdown(results: list[CellResult], base: ExperimentConfig, settings: GridSettings, seconds: float) -> str:
    clean = next((r.metrics["clean_metric"] for r in results if r.status == "ran"), "eval_accuracy")
    attacks = list(dict.fromkeys(r.cell.attack for r in results))
    lines = [f"# Attack grid: {base.name}", "",
             (f"{len(results)} cells ({sum(r.status == 'ran' for r in results)} ran, "
             f"{sum(r.status == 'refused' for r in results)} refused, "
             f"{sum(r.status == 'failed' for r in results)} failed) in {seconds / 60:.1f} min; "
             f"{base.partition.num_clients} clients, {base.training.rounds} rounds"
             + (f", grouped secagg in {settings.groups} groups (the server learns {settings.groups} group sums a "
                "round, not one)" if GridAggregation.GROUPED_SECAGG in settings.aggregations else "") + "."), ""]
    for epsilon in settings.epsilons:
        lines += [f"## {_eps(epsilon)}: {clean} of the final model", ""]
        lines += _pivot(results, epsilon, "clean", attacks) + [""]
        targeted = [a for a in attacks if a in TARGETED]
        if targeted:
            lines += [(f"## {_eps(epsilon)}: attack success rate in the attacker's last round (triggered held-out "
                       "inputs classified as the target; in brackets the same inputs without the trigger)"), ""]
            lines += _pivot(results, epsilon, "asr_last_attack", targeted, "target_rate_clean_last_attack") + [""]
    lines += ["## Every cell", "",
              "| attack | aggregation | defence | privacy | " + clean + " | ASR, attacker's last round (no "
              "trigger) | ASR, final (no trigger) | attacker survival (honest) | backdoor persistence (rounds) | "
              "rounds without update | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.metrics
        persistence = m.get("persistence_rounds")
        shown = "—" if persistence is None else f"{persistence}{'+' if m.get('persists_to_end') else ''}"
        lines.append(f"| {r.cell.attack.value} | {r.cell.aggregation.value} | {r.cell.defence.value} | "
                     f"{_eps(r.cell.epsilon)} | {_value(r, 'clean')} | "
                     f"{_value(r, 'asr_last_attack', 'target_rate_clean_last_attack')} | "
                     f"{_value(r, 'attack_success_rate', 'target_rate_clean')} | "
                     f"{_value(r, 'survival_rate', 'honest_survival_rate')} | {shown} | "
                     f"{m.get('rounds_without_update', '')} | {r.reason if r.status != 'ran' else ''} |")
    lines += ["", ("Attacker survival: the share of the inputs holding an attacker that the defence kept (1 = the "
                  "mean's full weight; under plain secagg the one sum always holds it), in brackets the same for the "
                  "other inputs. Persistence: rounds after the attacker stopped during which the backdoor's effect "
                  "(success rate minus the rate without the trigger) stayed at half its value then or more (+ : "
                  "until the last round; — : no effect to persist)."), ""]
    return "\n".join(lines)


def plot_grid(results: list[CellResult], path: Path) -> None:
    """Heat maps, one column per privacy setting: the clean metric for every attack, and the attack success rate
    for the targeted attacks; refused cells are hatched grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = list(dict.fromkeys(r.cell.epsilon for r in results))
    columns = _columns(results)
    attacks = list(dict.fromkeys(r.cell.attack for r in results))
    targeted = [a for a in attacks if a in TARGETED]
    panels = [("clean", attacks, "clean quality")] + ([("asr_last_attack", targeted,
                                                        "attack success rate, attacker's last round")]
                                                       if targeted else [])
    fig, axes = plt.subplots(len(panels), len(epsilons), squeeze=False,
                             figsize=(1.0 + 0.75 * len(columns) * len(epsilons), 1.2 + 0.45 * len(attacks) * len(panels)))
    for col, epsilon in enumerate(epsilons):
        for row, (key, rows, title) in enumerate(panels):
            ax = axes[row][col]
            grid = np.full((len(rows), len(columns)), np.nan)
            refused = np.zeros_like(grid, dtype=bool)
            for r in results:
                if r.cell.epsilon != epsilon or r.cell.attack not in rows:
                    continue
                i, j = rows.index(r.cell.attack), columns.index((r.cell.aggregation.value, r.cell.defence.value))
                refused[i, j] = r.status == "refused"
                value = r.metrics.get(key)
                if r.status == "ran" and isinstance(value, (int, float)):
                    grid[i, j] = value
            cmap = "viridis" if key == "clean" else "magma_r"
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1 if key != "clean" or
                      np.nanmax(np.nan_to_num(grid, nan=0)) <= 1 else None, aspect="auto")
            for i in range(len(rows)):
                for j in range(len(columns)):
                    if refused[i, j]:
                        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.88", edgecolor="0.6",
                                                   hatch="//", lw=0))
                        ax.text(j, i, "refused", ha="center", va="center", fontsize=6, color="0.3")
                    elif not np.isnan(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if (grid[i, j] < 0.5) == (key == "clean") else "black")
            ax.set_xticks(range(len(columns)), [f"{a}\n{d}" for a, d in columns], rotation=90, fontsize=7)
            ax.set_yticks(range(len(rows)), [a.value for a in rows], fontsize=8)
            ax.set_title(f"{title}, {_eps(epsilon)}", fontsize=9)
    fig.suptitle("privfed attack grid (hatched: refused — the aggregation hides what the defence needs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
