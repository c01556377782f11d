"""Every plot privfed draws, for the CLI (saved as PNG) and notebooks (shown inline) alike.

Each function returns the matplotlib ``Figure``; given ``path`` it also saves the figure there and closes it. The
backend is left to the caller: the CLI selects Agg, Jupyter its inline backend.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from privfed.federation.server_view import ServerView
from privfed.report.tables import quality_key

_SIZE = (5.5, 3.8)


def _label(key: str) -> str:
    return "accuracy (higher is better)" if key == "eval_accuracy" else "perplexity (lower is better)"


def _finish(fig: Figure, path: Path | str | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig


def plot_privacy_utility(runs: Sequence[dict], *, path: Path | str | None = None, ax=None) -> Figure:
    """Final quality against ε spent (log scale); non-private runs dashed, the untrained model dotted.

    Given ``ax``, draws there (and ``path`` saves that axes' whole figure).
    """
    if not runs:
        raise ValueError("plot_privacy_utility needs at least one run's results")
    key = quality_key(runs[0])
    private = sorted((float(r["final"]["epsilon"]), float(r["final"][key])) for r in runs
                     if math.isfinite(float(r["final"]["epsilon"])))
    public = [float(r["final"][key]) for r in runs if not math.isfinite(float(r["final"]["epsilon"]))]
    fig = plt.subplots(figsize=_SIZE, dpi=120)[0] if ax is None else ax.figure
    ax = ax or fig.axes[0]
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
    """Unsigned words scaled to [0, 1) by their word size, Paillier ciphertexts (Python ints) by 2^(their largest
    bit length); with the axis label and whether a uniform density of 1 is the reference (words fill [0, 1), while
    ciphertexts lie below n^2, short of 2^bits). None for floats, which are shown as they are."""
    if upload.dtype.kind == "u":
        bits = upload.dtype.itemsize * 8
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
