"""Every plot privfed draws, for the CLI (saved as PNG) and notebooks (shown inline) alike.

Each function returns the matplotlib ``Figure``; given ``path`` it also saves the figure there and closes it. The
backend is left to the caller: the CLI selects Agg, Jupyter its inline backend.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from privfed.federation.server_view import ServerView
from privfed.report.tables import quality_key

if TYPE_CHECKING:
    from privfed.runners.sweep import Sweep

_SIZE = (5.5, 3.8)


def _label(key: str) -> str:
    clients = "clients' " if key.startswith("fed_") else ""
    return clients + ("accuracy (higher is better)" if key.endswith("accuracy") else "perplexity (lower is better)")


def _finish(fig: Figure, path: Path | str | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig


def plot_privacy_utility(sweeps: Sequence[Sweep], *, path: Path | str | None = None, ax=None) -> Figure:
    """Final quality against ε spent (log scale), one series per sweep with 95 % error bars over its seeds; each
    series' non-private point as a dashed line of its colour with its interval as a band, labelled "tuned" or
    "same hyper-parameters, not tuned"; the untrained model dotted. Given ``ax``, draws there.
    """
    if not sweeps or not any(s.points for s in sweeps):
        raise ValueError("plot_privacy_utility needs at least one sweep with a point (privfed.summarize(runs) "
                         "makes one from run results)")
    metric = next(s.metric for s in sweeps if s.points)
    fig = plt.subplots(figsize=(6.4, 4.2), dpi=120)[0] if ax is None else ax.figure
    ax = ax or fig.axes[0]
    ticks: list[float] = []
    for i, sweep in enumerate(sweeps):
        colour = f"C{i}"
        private = sorted((p for p in sweep.points if p.private), key=lambda p: p.epsilon.mean)
        if private:
            xs = [p.epsilon.mean for p in private]
            ys = [p.quality.mean for p in private]
            errs = [0.0 if math.isnan(p.quality.half_width) else p.quality.half_width for p in private]
            ax.errorbar(xs, ys, yerr=errs, fmt="o-", color=colour, capsize=3, label=sweep.label)
            ticks += xs
            if len(sweeps) == 1:
                for p, x, y in zip(private, xs, ys):
                    ax.annotate(p.quality.text(3), (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        base = sweep.nonprivate
        if base is not None:
            kind = "tuned" if sweep.plan.tuned else "same hyper-parameters, not tuned"
            ax.axhline(base.quality.mean, linestyle="--", color=colour, linewidth=1,
                       label=f"{sweep.label if len(sweeps) > 1 else ''} no DP, {kind} ({base.quality.text(3)})".strip())
            if not math.isnan(base.quality.half_width):
                ax.axhspan(base.quality.low, base.quality.high, color=colour, alpha=0.12, linewidth=0)
    first = next(s for s in sweeps if s.points).points[0].runs[0]
    initial = first.get("initial", {}).get(metric)
    if initial is not None:
        ax.axhline(float(initial), linestyle=":", color="grey", label=f"before training ({float(initial):.3f})")
    ax.set_xscale("log")
    if ticks:  # ticks at the measured ε, written plainly (not 3×10⁰)
        shown = sorted({round(t, 2) for t in ticks})
        ax.set_xticks(shown, [f"{t:.3g}" for t in shown])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    seeds = max(p.quality.n for s in sweeps for p in s.points)
    ax.set_xlabel(f"ε spent (per client, δ = {float(first['final']['delta']):g})")
    ax.set_ylabel(_label(metric) + (f", mean ± 95 % CI of {seeds} seeds" if seeds > 1 else ""))
    ax.set_title(sweeps[0].label if len(sweeps) == 1 else "quality against ε")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_quality_vs_bytes(sweeps: Sequence[Sweep], *, path: Path | str | None = None) -> Figure:
    """Final quality against the bytes a client uploads per round (log scale), a marker per sweep and ε: where the
    regimes and aggregation methods sit between communication and quality."""
    points = [(s, p) for s in sweeps for p in s.points]
    if not points:
        raise ValueError("plot_quality_vs_bytes needs at least one sweep with a point")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    markers = "os^Dv<>P"
    epsilons = sorted({p.target_epsilon for _, p in points})
    for i, sweep in enumerate(sweeps):
        for p in sweep.points:
            marker = markers[epsilons.index(p.target_epsilon) % len(markers)]
            err = 0.0 if math.isnan(p.quality.half_width) else p.quality.half_width
            ax.errorbar([p.upload.mean / 1e6], [p.quality.mean], yerr=[err], fmt=marker, color=f"C{i}", capsize=3,
                        fillstyle="full" if p.private else "none")
    for i, sweep in enumerate(sweeps):  # legend: colour = series, marker = ε
        ax.plot([], [], "s", color=f"C{i}", label=sweep.label)
    for j, eps in enumerate(epsilons):
        ax.plot([], [], markers[j % len(markers)], color="k", fillstyle="full" if math.isfinite(eps) else "none",
                label="no DP" if math.isinf(eps) else f"ε = {eps:g}")
    ax.set_xscale("log")
    ax.set_xlabel("MB uploaded per client per round")
    ax.set_ylabel(_label(points[0][1].metric))
    ax.set_title("quality against upload")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_quality_against_setting(settings: Sequence[tuple[float, Sweep]], *, xlabel: str,
                                 path: Path | str | None = None, ax=None) -> Figure:
    """Quality against a setting (clients, examples per client, ...; log scale), one line per target ε with 95 %
    error bars: how far the private line sits below the non-private one as the setting moves (the gap study)."""
    if not settings:
        raise ValueError("plot_quality_against_setting needs at least one (setting, sweep) pair")
    fig = plt.subplots(figsize=_SIZE, dpi=120)[0] if ax is None else ax.figure
    ax = ax or fig.axes[0]
    epsilons = sorted({p.target_epsilon for _, s in settings for p in s.points})
    for i, eps in enumerate(epsilons):
        found = sorted((x, p) for x, s in settings for p in s.points if p.target_epsilon == eps)
        errs = [0.0 if math.isnan(p.quality.half_width) else p.quality.half_width for _, p in found]
        ax.errorbar([x for x, _ in found], [p.quality.mean for _, p in found], yerr=errs, fmt="o-" if
                    math.isfinite(eps) else "s--", color=f"C{i}", capsize=3,
                    label="no DP" if math.isinf(eps) else f"ε = {eps:g}")
    xs = sorted({x for x, _ in settings})
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(settings[0][1].metric))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_client_epsilons(results: dict, *, path: Path | str | None = None) -> Figure:
    """Each client's ε after every round (from the round rows' ``client_epsilons``), with the target: who spends
    its budget how fast (a small client's larger sampling rate, a client that sat a round out)."""
    rows = [r for r in results["rounds"] if r.get("client_epsilons")]
    if not rows:
        raise ValueError(f"run {results['config']['name']!r} has no per-client ε per round (a run without DP, or "
                         "one made before privfed recorded them)")
    fig, ax = plt.subplots(figsize=_SIZE, dpi=120)
    sizes = {str(c["client"]): c["examples"] for c in results["privacy"]["clients"]}
    for cid in sorted(rows[0]["client_epsilons"], key=int):
        ax.plot([0] + [r["round"] for r in rows], [0.0] + [float(r["client_epsilons"][cid]) for r in rows], "o-",
                label=f"client {cid} ({sizes.get(cid, '?')} examples)")
    target = results["privacy"].get("target_epsilon")
    if target is not None:
        ax.axhline(float(target), linestyle="--", color="grey", label=f"target ε = {float(target):g}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε spent (δ = {float(results['final']['delta']):g})")
    ax.set_title(f"{results['config']['name']}: ε per client")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_audit_epsilon(runs: Sequence[dict], *, path: Path | str | None = None, ax=None) -> Figure:
    """The one-run audit's ε lower bounds (Steinke; f-DP) against the accountant's ε, with the diagonal ε_lb = ε:
    a point above it is a violation. A run without DP sits at the right edge, marked ∞."""
    audited = [r for r in runs if "audit" in r and r["audit"].get("ε_lb") is not None]
    if not audited:
        raise ValueError("plot_audit_epsilon needs runs audited with the one-run audit (privfed sweep --audit)")
    claimed = [float(r["audit"]["audited ε"]) for r in audited]  # the audited client's ε ("inf" without DP)
    finite = [e for e in claimed if math.isfinite(e)]
    right = 2 * max(finite) if finite else 10.0
    xs = [e if math.isfinite(e) else right for e in claimed]
    fig = plt.subplots(figsize=_SIZE, dpi=120)[0] if ax is None else ax.figure
    ax = ax or fig.axes[0]
    top = max([right] + [float(r["audit"]["ε_lb"]) for r in audited])
    ax.plot([0, right], [0, right], ":", color="grey", label="ε_lb = ε (above: a violation)")
    for key, marker, label in (("ε_lb", "o", "Steinke et al. (decides the verdict)"),
                               ("ε_lb f-DP", "s", "f-DP, Gaussian trade-off")):
        ys = [float(r["audit"][key]) if r["audit"].get(key) is not None else math.nan for r in audited]
        ax.plot(xs, ys, marker, label=label, alpha=0.8)
    ax.set_xticks(xs, [f"{e:.3g}" if math.isfinite(e) else "∞ (no DP)" for e in claimed])
    ax.set_xlim(0, right * 1.08)
    ax.set_ylim(0, top * 1.08)
    ax.set_xlabel("ε claimed by the accountant (audited client)")
    ax.set_ylabel("ε lower bound from one run (95 %)")
    ax.set_title(audited[0]["config"]["name"].split("-eps")[0] + ": audited ε")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_rounds(results: dict, *, path: Path | str | None = None) -> Figure:
    """Quality and ε per round, on twin axes; round 0 is the model before training."""
    key = quality_key(results)
    rounds = [0] + [r["round"] for r in results["rounds"]]
    quality = [float(results["initial"][key])] + [float(r[key]) for r in results["rounds"]]
    fig, ax = plt.subplots(figsize=_SIZE, dpi=120)
    ax.plot(rounds, quality, "o-", color="C0")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole rounds, not crowded
    ax.set_ylabel(_label(key), color="C0")
    eps = [0.0] + [float(r["epsilon"]) for r in results["rounds"]]
    if all(math.isfinite(e) for e in eps):
        ax2 = ax.twinx()
        ax2.plot(rounds, eps, "s--", color="C3")
        ax2.set_ylabel("ε spent (worst client)", color="C3")
        ax2.set_ylim(bottom=0)
    ax.set_title(results["config"]["name"])
    ax.grid(True, alpha=0.3)
    return _finish(fig, path)


def plot_client_quality(runs: Sequence[dict], *, labels: Sequence[str] | None = None,
                        path: Path | str | None = None) -> Figure:
    """Each client's held-out quality before and after training, one panel per run (natural partitions).

    A client's held-out examples are those of its own natural groups, so the panels show who the federation
    serves well and who it leaves behind.
    """
    if not runs:
        raise ValueError("plot_client_quality needs at least one run's results")
    labels = list(labels) if labels is not None else [r["config"]["name"] for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    key = quality_key(runs[0])
    fig, axes = plt.subplots(1, len(runs), figsize=(2.6 * len(runs) + 1.2, 3.6), dpi=120, sharey=True,
                             squeeze=False)
    for ax, res, label in zip(axes[0], runs, labels):
        before, after = res["initial"].get("per_client"), (res["rounds"][-1] if res["rounds"] else {}).get("per_client")
        if not before or not after:
            raise ValueError(f"run {res['config']['name']!r} has no per-client evaluation: it needs "
                             "partition.scheme=natural (each client owns its natural groups' held-out examples)")
        clients = sorted(before, key=int)
        x = np.arange(len(clients))
        ax.bar(x - 0.2, [before[c][key] for c in clients], 0.4, color="0.75", label="before")
        ax.bar(x + 0.2, [after[c][key] for c in clients], 0.4, color="C0", label="after")
        ax.set_xticks(x, [f"{c}\n({before[c]['examples']})" for c in clients], fontsize=8)
        eps = float(res["final"]["epsilon"])
        ax.set_title(f"{label}\nε = {'∞' if math.isinf(eps) else f'{eps:.2f}'}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel(_label(key))
    axes[0][0].legend(fontsize=8)
    fig.supxlabel("client (held-out examples)", fontsize=9)
    return _finish(fig, path)


def _as_unit_interval(upload: np.ndarray) -> tuple[np.ndarray, str, bool] | None:
    """Unsigned words scaled to [0, 1) by 2^k (k: their largest bit length, the word size of uniform masked words,
    which may be narrower than their container), Paillier ciphertexts (Python ints) by 2^(their largest bit
    length); with the axis label and whether a uniform density of 1 is the reference (words fill [0, 1), while
    ciphertexts lie below n^2, short of 2^bits). None for floats, which are shown as they are."""
    if upload.dtype.kind == "u":
        bits = max(int(upload.max(initial=0)).bit_length(), 1)
        return upload.astype(np.float64) / 2.0 ** bits, f"word / 2^{bits}", True
    if upload.dtype == object and len(upload) and isinstance(upload[0], int):
        bits = max(int(c).bit_length() for c in upload)
        shift = max(bits - 53, 0)  # the top 53 bits: what a float64 holds exactly
        unit = np.array([(int(c) >> shift) / 2.0 ** (bits - shift) for c in upload])
        return unit, f"ciphertext / 2^{bits}", False
    return None


def plot_server_view(inputs: Mapping[int, np.ndarray], views: Mapping[str, ServerView], client: int, *,
                     path: Path | str | None = None) -> Figure:
    """One client's input beside what the server received from it under each back-end.

    ``views`` maps a label (e.g. "plain", "secagg", "paillier") to the :class:`ServerView` of a round over
    ``inputs``. A plain upload is the input itself; a masked upload (unsigned words) is drawn scaled to [0, 1),
    where a uniform histogram is what "indistinguishable from noise" looks like; Paillier ciphertexts are drawn
    scaled by 2^(their bit length).
    """
    fig, axes = plt.subplots(1, 1 + len(views), figsize=(3.2 * (1 + len(views)), 3.2), dpi=120, squeeze=False)
    axes = axes[0]
    values = np.asarray(inputs[client], dtype=np.float64)
    axes[0].hist(values, bins=50, color="C2")
    axes[0].set_title(f"client {client}'s input", fontsize=9)
    axes[0].set_xlabel("value")
    for ax, (label, view) in zip(axes[1:], views.items()):
        upload = view.uploads.get(client)
        if upload is None:
            ax.text(0.5, 0.5, "nothing received", ha="center", va="center", transform=ax.transAxes)
        elif (scaled := _as_unit_interval(upload)) is not None:
            unit, xlabel, uniform_reference = scaled
            ax.hist(unit, bins=min(50, max(5, len(unit) // 20)), color="C3", density=True)
            if uniform_reference:
                ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="uniform")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel(xlabel)
        else:
            ax.hist(np.asarray(upload, dtype=np.float64), bins=50, color="C0")
            ax.set_xlabel("value")
        ax.set_title(f"server's view: {label}", fontsize=9)
    axes[0].set_ylabel("count")
    return _finish(fig, path)


def plot_messages(view: ServerView, *, path: Path | str | None = None) -> Figure:
    """Bytes each client sent the server in one round, one bar per message type (log scale: key exchanges are
    hundreds of bytes, an update tens of thousands). A client that dropped out is missing its later bars."""
    senders = sorted({m.sender for m in view.messages})
    kinds = list(dict.fromkeys(m.kind for m in view.messages))
    width = 0.8 / max(len(kinds), 1)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=120)
    for i, kind in enumerate(kinds):
        sizes = [sum(m.size for m in view.messages if m.sender == s and m.kind == kind) for s in senders]
        ax.bar(np.arange(len(senders)) + (i - (len(kinds) - 1) / 2) * width, sizes, width, label=kind.lower())
    ax.set_xticks(np.arange(len(senders)), [str(s) for s in senders])
    ax.set_yscale("log")
    ax.set_xlabel("client")
    ax.set_ylabel("bytes sent to the server")
    ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, path)
