"""An audit's findings as rows (audit, what was observed, metric, value with its interval, the accountant's ε,
verdict), written as audit.json and a Markdown table."""
from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from privfed.results import AUDIT_FILES, jsonable

AUDIT_JSON, AUDIT_TABLE = AUDIT_FILES


class Verdict(enum.Enum):
    CONSISTENT = "consistent"  # the measurement stays within what the claimed ε allows
    VIOLATION = "VIOLATION"  # the measurement contradicts the claimed ε (at the stated confidence)
    MEASURED = "measured"  # a leakage measurement with no bound to compare against (exposure, reconstruction)
    NOT_APPLICABLE = "n/a"  # nothing to measure here (e.g. ciphertexts the server cannot read)


@dataclass(frozen=True)
class AuditRow:
    audit: str
    observed: str
    metric: str
    value: float
    interval: tuple[float, float] | None  # a confidence interval, or (lowest, highest) over repeats where noted
    claimed_epsilon: float  # the audited client's ε from the accountant (inf: no DP)
    bound: float | None  # what the claimed (ε, δ) allows for this metric, where DP bounds it
    verdict: Verdict
    note: str = ""


@dataclass(frozen=True)
class AuditReport:
    name: str
    client: int
    claimed_epsilon: float
    delta: float
    confidence: float
    fault: str
    rows: tuple[AuditRow, ...]
    quality: dict  # the final model's evaluation (accuracy or perplexity, loss)
    settings: dict  # the audit's settings, as given (a sweep reuses an audit only with the same ones)
    seconds: float

    @property
    def violation(self) -> bool:
        return any(r.verdict is Verdict.VIOLATION for r in self.rows)

    def find(self, audit: str, observed: str | None = None, metric: str | None = None) -> AuditRow:
        """The first row of ``audit`` (optionally with ``observed`` and ``metric`` as prefixes); KeyError if none."""
        for row in self.rows:
            if (row.audit == audit and (observed is None or row.observed.startswith(observed))
                    and (metric is None or row.metric.startswith(metric))):
                return row
        raise KeyError(f"no audit row {audit!r} / {observed!r} / {metric!r}")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["violation"] = self.violation
        out["rows"] = [{**asdict(r), "verdict": r.verdict.value} for r in self.rows]
        return jsonable(out)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(report: AuditReport) -> str:
    head = (f"Audit of client {report.client} in `{report.name}`: accountant ε = {_number(report.claimed_epsilon)}, "
            f"δ = {report.delta:g}, confidence {report.confidence:.0%}"
            + (f", injected fault: {report.fault}" if report.fault != "none" else "") + "\n\n")
    lines = ["| audit | observed | metric | value | interval | ε (accountant) | DP allows | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        interval = "" if r.interval is None else f"[{_number(r.interval[0])}, {_number(r.interval[1])}]"
        verdict = f"**{r.verdict.value}**" if r.verdict is Verdict.VIOLATION else r.verdict.value
        lines.append(f"| {r.audit} | {r.observed} | {r.metric} | {_number(r.value)} | {interval} | "
                     f"{_number(r.claimed_epsilon)} | {_number(r.bound)} | {verdict} |")
    notes = sorted({r.note for r in report.rows if r.note})
    return head + "\n".join(lines) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"


def write_report(report: AuditReport, out_dir: Path) -> str:
    """audit.json and audit.md in ``out_dir``; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / AUDIT_JSON).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    text = markdown(report)
    (out_dir / AUDIT_TABLE).write_text(text)
    return text


def read_report(path: Path) -> dict:
    file = path / AUDIT_JSON if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (is {path} a privfed audit?)")
    return json.loads(file.read_text())


def headline(report: dict) -> dict:
    """The few numbers a sweep's table shows beside ε and quality: the audited client's ε (the claim audited), the
    one-run ε_lb on its update (Steinke and f-DP), the loss attack's AUC on the final model, the exposure of the
    most-inserted secrets, and the verdict. Absent audits give None."""
    rows = report["rows"]

    def first(audit: str, metric: str, observed: str = "") -> float | None:
        for r in rows:
            if r["audit"] == audit and r["metric"].startswith(metric) and r["observed"].startswith(observed):
                value = r["value"]
                return None if isinstance(value, str) else float(value)
        return None

    return {"audited ε": report["claimed_epsilon"],
            "ε_lb": first("one-run ε lower bound", "ε_lb (Steinke)", "client"),
            "ε_lb f-DP": first("one-run ε lower bound", "ε_lb (f-DP", "client"),
            "MIA AUC": first("membership inference", "AUC (loss)", "the final model"),
            "exposure": first("canary exposure", "exposure", "the final model, ") if any(
                r["audit"] == "canary exposure" and "inserted" in r["observed"] and "never" not in r["observed"]
                for r in rows) else None,
            "verdict": "VIOLATION" if report["violation"] else "consistent"}
