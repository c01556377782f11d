"""Tables of privacy budget against model quality, rebuilt from results.json alone."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from privfed.results import loss_key, metric_as
from privfed.results import quality_key as final_quality_key


def _num(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)  # float("inf") parses the "inf" that results.json stores


def fmt(value: Any, digits: int = 3) -> str:
    x = _num(value)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞"
    if 0 < abs(x) < 1e-3:
        return f"{x:.0e}"
    if abs(x) >= 1000 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def quality_key(results: dict) -> str:
    return final_quality_key(results["final"])


def short_source(source: str) -> str:
    """A model source as a table shows it: a built-in or cached name as it is, a folder by its last two parts."""
    parts = Path(source).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else source


def summary_rows(runs: list[dict]) -> list[dict[str, Any]]:
    """One row per run: what was trained, the ε spent (and targeted) and the final quality."""
    rows = []
    for res in runs:
        cfg, final, privacy = res["config"], res["final"], res["privacy"]
        key = quality_key(res)
        rows.append({
            "run": cfg["name"],
            "model": f"{short_source(cfg['model']['source'])}/{cfg['model']['regime']}",
            "clients": len(res["partition"]),
            "rounds": len(res["rounds"]),
            "target ε": privacy["target_epsilon"] if privacy["target_epsilon"] is not None else
            ("inf" if privacy["mode"] == "off" else None),
            "ε spent": final["epsilon"],
            "user ε": final.get("user_epsilon", "inf"),
            "δ": final["delta"],
            "accuracy" if key.endswith("accuracy") else "perplexity": final[key],
            "initial": res["initial"].get(key),
            **res.get("audit", {}),
            "seconds": res["seconds"],
        })
    if not any(math.isfinite(_num(r["user ε"])) for r in rows):  # no distributed DP anywhere: omit the column
        for row in rows:
            del row["user ε"]
    return rows


def round_rows(results: dict) -> list[dict[str, Any]]:
    key = quality_key(results)
    label = "accuracy" if key.endswith("accuracy") else "perplexity"
    clients_key = metric_as(key, "fed_")  # evaluation.where both: the clients' totals beside the server's
    both = key.startswith("eval_") and any(clients_key in r for r in results["rounds"])
    secure = any("protocol" in (r.get("aggregation") or {}) or r.get("dropouts") for r in results["rounds"])
    rows = []
    for r in results["rounds"]:
        row = {"round": r["round"], "train loss": r["train_loss"],
               "eval loss" if key.startswith("eval_") else "clients' loss": r.get(loss_key(key), math.nan),
               label if key.startswith("eval_") else f"clients' {label}": r.get(key, math.nan)}
        if both:
            row[f"clients' {label}"] = r.get(clients_key, math.nan)
        row["ε"] = r["epsilon"]
        if "user_epsilon" in r:
            row["user ε"] = r["user_epsilon"]
        if secure:  # who made it into the sum
            row["summed"] = r.get("clients_aggregated", "–")
            row["dropped"] = r.get("dropouts", "–")
        row.update({"MB up": _num(r["bytes_up"]) / 1e6, "MB down": _num(r["bytes_down"]) / 1e6,
                    "seconds": r["seconds"]})
        rows.append(row)
    return rows


def _cell(header: str, value: Any) -> str:
    if isinstance(value, str) and value != "inf":
        return value
    return fmt(value, 4 if header == "accuracy" else 3)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = [_cell(h, row.get(h)) for h in headers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _label(metric: str) -> str:
    return "accuracy" if metric.endswith("accuracy") else "perplexity"


def _interval_cell(interval) -> str:  # noqa: ANN001 - an Interval (imported lazily: tables stay light)
    return interval.text(4 if abs(interval.mean) < 10 else 2)


def sweep_rows(sweeps) -> list[dict[str, Any]]:  # noqa: ANN001 - Sweep objects
    """One row per (series, ε): the kept trial's test quality over the seeds, its ε spent, the validation quality
    the tuner saw, the hyper-parameters it kept, the upload per client per round and the seconds per run."""
    from privfed.runners.tuning import trial_text

    rows = []
    for sweep in sweeps:
        for p in sweep.points:
            label = _label(p.metric)
            validation = p.validation
            rows.append({
                "series": sweep.label,
                "target ε": "inf" if not p.private else p.target_epsilon,
                "ε spent": "inf" if not p.private else fmt(p.epsilon.mean),
                label: _interval_cell(p.quality),
                "seeds": p.quality.n,
                f"validation {label}": "–" if validation is None else _interval_cell(validation),
                "kept": trial_text(p.trial),
                "user ε": fmt(max(_num(r["final"].get("user_epsilon", "inf")) for r in p.runs)),
                "MB up/client/round": fmt(p.upload.mean / 1e6),
                **_audit_cells(p.runs),
                "seconds/run": fmt(sum(float(r["seconds"]) for r in p.runs) / len(p.runs), 1),
            })
    if not any(row["user ε"] != "∞" for row in rows):  # no distributed DP anywhere: omit the column
        for row in rows:
            del row["user ε"]
    return rows


def _audit_cells(runs: list[dict]) -> dict[str, Any]:
    """An audited point's audit headline: numbers averaged over its runs, words joined (any violation shows)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.get("audit", {})))
    out: dict[str, Any] = {}
    for key in keys:
        values = [r["audit"].get(key) for r in runs if r.get("audit")]
        numbers = [_num(v) for v in values if isinstance(v, (int, float)) or (isinstance(v, str) and _is_number(v))]
        out[key] = fmt(math.fsum(numbers) / len(numbers)) if numbers and len(numbers) == len(values) else \
            " / ".join(dict.fromkeys(str(v) for v in values))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sweep_markdown(sweep) -> str:  # noqa: ANN001 - a Sweep
    """The sweep's table with what was tuned, how many seeds, and any warnings, in words above it."""
    rows = sweep_rows([sweep])
    for row in rows:
        del row["series"]
    lines = [f"**{sweep.label}** — {sweep.tuning_text()} {sweep.seed_text()}", "", markdown_table(rows)]
    for warning in sweep.anomalies():
        lines += ["", f"warning: {warning}"]
    for failure in sweep.failed:
        lines += ["", f"failed: {failure['run']}: {failure['error']}"]
    return "\n".join(lines)


def tuning_markdown(sweep) -> str:  # noqa: ANN001 - a Sweep
    """Every trial at every ε: validation and test quality over the seeds, and which the tuner kept."""
    from privfed.runners.tuning import trial_text

    label = _label(sweep.metric)
    rows = []
    for t in sweep.trials:
        validation = t.point.validation
        rows.append({"target ε": "inf" if math.isinf(t.target_epsilon) else t.target_epsilon,
                     "trial": trial_text(t.trial),
                     f"validation {label}": "–" if validation is None else _interval_cell(validation),
                     f"test {label}": _interval_cell(t.point.quality), "seeds": len(t.runs),
                     "kept": "yes" if t.chosen else ""})
    return f"**{sweep.label}: every trial** — {sweep.tuning_text()}\n\n{markdown_table(rows)}"
