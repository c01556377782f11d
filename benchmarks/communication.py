"""Bytes on the wire against model quality: secure aggregation at k = 32, 16, 12, 8, 6, 5, 4 bits a value.

Every setting trains the demo (MiniLM + LoRA on BBC News, 5 Dirichlet clients, 3 rounds, record-level DP-SGD at
ε = 8) on the same seeds, so a seed's runs share their data split, initialisation, client sampling and DP noise and
differ only in how the updates are aggregated; the quality cost of few bits is read as the *paired* difference
against plain float32 aggregation (mean ± 95 % Student-t interval over the seeds). Settings:

* ``plain``: float32 values, no secure aggregation (the baseline; privfed's default secagg encoding, 20 value
  bits in 32-bit words, is float32's size and within 1e-6 of it);
* ``secagg, k bits``: ``aggregation.word_bits=k`` (value bits: the most whose exact sum fits) at one clip range,
  ``--clip-range`` (default 0.125: an Adam update moves a coordinate at most about lr x local steps, 0.03 x 4);
* ``secagg, 8 bits + rotation``: the same with the randomized Hadamard rotation.

With ``--user-noise Z`` a second family measures user-level distributed DP instead of record-level DP-SGD
(``privacy.mode=off``): every client clips its whole update to ``--user-clip``, the secure sum carries Skellam
noise of multiplier Z, the update is rotated (``--user-clip-range``, the rotated coordinates' range). Its rows are
paired against its own 32-bit words (20 value bits): what the bits cost at the same user-level ε. Rows without
"fixed clip" use adaptive clipping instead (the median, starting at ``--user-clip``, learning rate 1 so that it
moves within the demo's 3 rounds, at most 8 times the start).

With ``--smollm2-seeds N`` a third family trains SmolLM2-135M-Instruct + LoRA on the chat data
(``experiments/chatterbot_smollm2_lora.yaml``, record-level ε = 8) with plain float32, 16-bit and 8-bit words
(``--smollm2-clip-range``, default 0.015: lr 0.003 × 4 local steps bounds an Adam update's coordinate); its quality
is held-out perplexity, paired against its own plain float32 runs.

A setting the configuration refuses (too few bits for the clients' exact sum, or a noisy sum that would wrap more
often than ``aggregation.max_wrap_probability``) is listed with the reason.

    python benchmarks/communication.py [--seeds 3] [--bits 32,16,12,8,6,5,4] [--clip-range 0.125] [--workers 2]
                                       [--user-noise 0.02 --user-bits 32,16,12,8 --user-clip 1 --user-clip-range 0.05]
                                       [--smollm2-seeds 2 --smollm2-clip-range 0.015]

Prints the table, writes it with the figure (quality against the upload per client and round) to
``benchmarks/results/`` and, last, one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmark_table import table  # benchmarks/benchmark_table.py, beside this script

from privfed.config import ExperimentConfig, load_config
from privfed.errors import ConfigError
from privfed.report.intervals import Interval
from privfed.run_result import read_results
from privfed.runners.sweep import execute_jobs, upload_per_client

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Setting:
    label: str
    overrides: tuple[str, ...]
    baseline: str = "plain float32"  # the setting its quality change is paired against
    config_file: str | None = None  # None: the built-in demo
    metric: str = "eval_accuracy"  # the results' final metric that measures quality
    seeds: int | None = None  # None: --seeds

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label).strip("-")


def settings(bits: list[int], clip_range: float) -> list[Setting]:
    found = [Setting("plain float32", ("aggregation=plain",))]
    found += [Setting(f"secagg, {b} bits", ("aggregation=secagg", f"aggregation.word_bits={b}",
                                             f"aggregation.clip_range={clip_range}")) for b in bits]
    if 8 in bits:
        found.append(Setting("secagg, 8 bits + rotation", ("aggregation=secagg", "aggregation.word_bits=8",
                                                            f"aggregation.clip_range={clip_range}",
                                                            "aggregation.rotation=true")))
    return found


USER_BASELINE = "user-level DP, 32-bit words, fixed clip"


def user_settings(bits: list[int], noise: float, clip: float, clip_range: float) -> list[Setting]:
    """Distributed DP at noise multiplier ``noise``, rotated: the clip norm fixed at ``clip`` at every word size,
    and adaptive (the median, starting at ``clip``, at most 8 times it) at 32, 16 and 12 bits."""
    common = ("aggregation=secagg", "aggregation.rotation=true", f"aggregation.clip_range={clip_range}",
              "privacy.mode=off", f"privacy.distributed_noise={noise}", f"privacy.update_clip={clip}")
    adaptive = (*common, "privacy.clip_quantile=0.5", "privacy.clip_learning_rate=1.0",
                f"privacy.max_update_clip={8 * clip:g}")
    found = [Setting(USER_BASELINE, common, USER_BASELINE)]
    found += [Setting(f"user-level DP, {b} bits, fixed clip", (*common, f"aggregation.word_bits={b}"), USER_BASELINE)
              for b in bits if b != 32]
    found.append(Setting("user-level DP, 32-bit words", adaptive, USER_BASELINE))  # adaptive
    found += [Setting(f"user-level DP, {b} bits", (*adaptive, f"aggregation.word_bits={b}"), USER_BASELINE)
              for b in bits if b in (16, 12)]
    return found


SMOLLM2_CONFIG = str(HERE.parent / "experiments" / "chatterbot_smollm2_lora.yaml")
SMOLLM2_BASELINE = "SmolLM2 chat, plain float32"


def smollm2_settings(seeds: int, clip_range: float) -> list[Setting]:
    """SmolLM2-135M + LoRA on the chat data at record-level ε = 8 (quality: perplexity, lower is better)."""
    common = {"baseline": SMOLLM2_BASELINE, "config_file": SMOLLM2_CONFIG, "metric": "eval_perplexity",
              "seeds": seeds}
    secagg = ("aggregation=secagg", f"aggregation.clip_range={clip_range}")
    return [Setting(SMOLLM2_BASELINE, ("aggregation=plain",), **common),
            Setting("SmolLM2 chat, secagg 16 bits", (*secagg, "aggregation.word_bits=16"), **common),
            Setting("SmolLM2 chat, secagg 8 bits", (*secagg, "aggregation.word_bits=8"), **common)]


def config(setting: Setting, seed: int) -> ExperimentConfig:
    return load_config(setting.config_file, [*setting.overrides, f"seed={seed}", f"name={setting.slug}-s{seed}"])


def quality(results: dict, metric: str) -> float:
    return float(results["final"][metric])


def change_text(mean: float, half: float, n: int, metric: str) -> str:
    """A paired change: accuracy in points, perplexity as it is."""
    scale, unit, digits = (100, " pt", 1) if metric == "eval_accuracy" else (1, " ppl", 2)
    return f"{scale * mean:+.{digits}f}" + (f" ± {scale * half:.{digits}f}" if n > 1 else "") + unit


def user_epsilon(results: dict) -> str:
    value = float(results["final"].get("user_epsilon") or math.inf)  # results.json writes infinity as "inf"
    return "∞" if math.isinf(value) else f"{value:.3g}"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bits", default="32,16,12,8,6,5,4", help="word sizes to run, comma-separated")
    parser.add_argument("--clip-range", type=float, default=0.125)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/communication"), help="the runs (reused if there)")
    parser.add_argument("--user-noise", type=float, default=0.0, help="user-level family's noise multiplier (0: none)")
    parser.add_argument("--user-bits", default="32,16,12,8")
    parser.add_argument("--user-clip", type=float, default=1.0)
    parser.add_argument("--user-clip-range", type=float, default=0.05)
    parser.add_argument("--smollm2-seeds", type=int, default=0, help="SmolLM2 chat family's seeds (0: none)")
    parser.add_argument("--smollm2-clip-range", type=float, default=0.015)
    args = parser.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    chosen = settings(bits, args.clip_range)
    if args.user_noise > 0:
        chosen += user_settings([int(b) for b in args.user_bits.split(",")], args.user_noise, args.user_clip,
                                args.user_clip_range)
    if args.smollm2_seeds > 0:
        chosen += smollm2_settings(args.smollm2_seeds, args.smollm2_clip_range)
    seeds_of = {s.label: range(s.seeds or args.seeds) for s in chosen}
    refused: dict[str, str] = {}
    jobs = []
    for s in chosen:
        try:
            jobs += [(config(s, seed), args.out / s.slug / f"s{seed}") for seed in seeds_of[s.label]]
        except ConfigError as err:
            refused[s.label] = str(err)
    # a refusal that only building the back-end finds (the exact sum's headroom) comes back as the runs' error
    outcomes = execute_jobs([(c, p) for c, p in jobs if not (p / "results.json").exists()], workers=args.workers)
    results: dict[str, list[dict]] = {}
    for s in chosen:
        for seed in seeds_of[s.label]:
            path = args.out / s.slug / f"s{seed}"
            found = outcomes.get(f"{s.slug}-s{seed}")
            if isinstance(found, str):
                refused.setdefault(s.label, found)
            elif (path / "results.json").exists():
                results.setdefault(s.label, []).append(read_results(path))
    metric_of = {s.label: s.metric for s in chosen}
    baselines = {label: {r["config"]["seed"]: quality(r, metric_of[label]) for r in results.get(label, [])}
                 for label in {s.baseline for s in chosen}}
    def float_bytes(setting: Setting) -> float:
        """The upload of plain float32 aggregation of the same model: the demo's, or SmolLM2's."""
        label = SMOLLM2_BASELINE if setting.config_file == SMOLLM2_CONFIG else "plain float32"
        return upload_per_client(results[label][0]) if label in results else math.nan
    rows = []
    for s in chosen:
        if s.label in refused:
            rows.append({"setting": s.label, "refused": refused[s.label].splitlines()[0]})
            continue
        runs = results.get(s.label, [])
        if not runs:
            continue
        measured = Interval.of(quality(r, s.metric) for r in runs)
        baseline = baselines[s.baseline]
        paired = Interval.of(quality(r, s.metric) - baseline[r["config"]["seed"]] for r in runs
                             if r["config"]["seed"] in baseline)
        up = upload_per_client(runs[0])
        aggregation = runs[0]["rounds"][-1].get("aggregation") or {}
        rows.append({"setting": s.label, "word bits": aggregation.get("word_bits", "float32"),
                     "value bits": aggregation.get("value_bits", "–"), "seeds": len(runs),
                     "quality": f"{measured.text()} {'accuracy' if s.metric == 'eval_accuracy' else 'perplexity'}",
                     "vs baseline": change_text(paired.mean, paired.half_width, paired.n, s.metric),
                     "baseline": {"plain float32": "plain", USER_BASELINE: "user-level 32-bit"}.get(s.baseline,
                                                                                                    "SmolLM2 plain"),
                     "user ε": user_epsilon(runs[0]),
                     "MB up/client/round": up / 1e6, "upload / float32": up / float_bytes(s),
                     # under distributed DP a client keeps its encoding statistics to itself
                     "quantisation rms": aggregation.get("quantisation_rms", "–" if "update_clip" in aggregation
                                                         else 0.0),
                     "_mean": measured.mean, "_half": measured.half_width, "_paired": paired.mean,
                     "_paired_half": paired.half_width, "_metric": s.metric})
    columns = ["setting", "word bits", "value bits", "seeds", "quality", "baseline", "vs baseline",
               "MB up/client/round", "upload / float32", "quantisation rms"]
    if args.user_noise > 0:
        columns.insert(5, "user ε")
    text = table([r for r in rows if "refused" not in r], columns)
    text += "".join(f"\n\nrefused: {r['setting']}: {r['refused']}" for r in rows if "refused" in r)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    minutes = sum(float(r["seconds"]) for runs in results.values() for r in runs) / 60
    command = " ".join(["python benchmarks/communication.py", *argv])
    (RESULTS / "communication.md").write_text(f"`{command}`: {sum(map(len, results.values()))} runs, {minutes:.0f} "
                                              f"min of run time on 2 CPU cores ({args.workers} at once)\n\n{text}\n")
    plot([r for r in rows if "refused" not in r], RESULTS / "communication.png")
    summary = {"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
               "clip_range": args.clip_range, "seeds": args.seeds}
    print(json.dumps(summary))
    return summary


def plot(rows: list[dict], path: Path) -> None:
    """One panel per family, each against the upload per client and round relative to its model's float32 (log
    scale): (a) the demo at record-level ε = 8, the accuracy change paired with plain float32 by seed; (b) the demo
    under user-level distributed DP, accuracy with the clip norm fixed and adaptive; (c) SmolLM2 on the chat data,
    the perplexity change paired with plain float32. Error bars: 95 % Student-t intervals over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [("record", [r for r in rows if r["_metric"] == "eval_accuracy"
                            and not r["setting"].startswith("user-level")]),
                ("user", [r for r in rows if r["setting"].startswith("user-level")]),
                ("chat", [r for r in rows if r["_metric"] != "eval_accuracy"])]
    families = [(name, found) for name, found in families if found]
    fig, axes = plt.subplots(1, len(families), figsize=(5.6 * len(families), 4.4), squeeze=False)
    for ax, (name, found) in zip(axes[0], families):
        for r in found:
            x, label = r["upload / float32"], "float32" if r["word bits"] == "float32" else f"{r['word bits']}"
            if name == "record":
                y, half = 100 * r["_paired"], 100 * r["_paired_half"]
                marker = "s" if label == "float32" else "D" if "rotation" in r["setting"] else "o"
                colour = "C2" if marker == "s" else "C1" if marker == "D" else "C0"
                label += " + rot." if marker == "D" else ""
            elif name == "user":
                y, half = r["_mean"], r["_half"]
                fixed = "fixed" in r["setting"]
                marker, colour = ("v", "C3") if fixed else ("^", "C1")
                label += " fixed S" if fixed else " adaptive S"
            else:
                y, half = r["_paired"], r["_paired_half"]
                marker, colour = ("s", "C2") if label == "float32" else ("o", "C4")
            ax.errorbar(x, y, yerr=0.0 if math.isnan(half) else half, fmt=marker, capsize=3, color=colour)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("upload per client and round ÷ its model's float32 (log)")
        ax.grid(alpha=0.3)
        if name == "record":
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.axhline(-1.0, color="grey", lw=0.8, ls=":")
            ax.set_ylabel("accuracy change vs plain float32, points\n(paired by seed; dotted: −1 point)")
            ax.set_title("(a) demo, record-level ε = 8", fontsize=10)
        elif name == "user":
            ax.set_ylabel("test accuracy")
            ax.set_title("(b) demo, user-level distributed DP (same z)", fontsize=10)
        else:
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_ylabel("perplexity change vs plain float32\n(paired by seed; below 0 is better)")
            ax.set_title("(c) SmolLM2-135M + LoRA, chat data, ε = 8", fontsize=10)
    fig.suptitle("Bits a value on the wire (label) against quality, per family", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
