"""A finished run as Python sees it: results.json as a mapping, with typed accessors, a DataFrame and a plot.

:class:`RunResult` is what :func:`privfed.run` returns and :func:`privfed.load_results` reads back — the same
object either way: results.json writes an infinite ε (no DP) or a NaN loss as the strings ``"inf"``/``"nan"`` to
stay strict JSON, and reading turns them back into floats (the config stays in its own plain form, as in
memory), so ``result.epsilon`` is a float before and after a round trip. It is a ``dict`` of exactly the keys
results.json holds (every table, plot and runner reads it as one), and adds names for what people ask of a run.
:func:`compare` lines up runs by a config key.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfed.results import RESULTS, loss_key, quality_key

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from privfed.config import ExperimentConfig

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


TEXT_KEYS = frozenset({"config", "notes", "generations", "versions"})  # kept as written: text, and the config
# in its own plain form (privfed.config.to_dict writes inf as "inf", as the run's results do in memory)


def _decoded(value: Any) -> Any:
    """results.json's strings for non-finite floats back into floats, except under :data:`TEXT_KEYS`."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, Mapping):
        return {k: v if k in TEXT_KEYS else _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


class RunResult(dict):
    """One finished run: ``result["rounds"]`` etc. as in results.json, and typed names for the usual questions."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunResult:
        """From results.json's parsed content (non-finite floats restored)."""
        return cls(_decoded(raw))

    @property
    def name(self) -> str:
        return str(self["config"]["name"])

    @property
    def config(self) -> ExperimentConfig:
        """The run's resolved config, as a typed, frozen config."""
        from privfed.config import from_dict

        return from_dict(self["config"])

    @property
    def rounds(self) -> list[dict]:
        """One row per round, as metrics.csv."""
        return list(self["rounds"])

    @property
    def final(self) -> dict:
        """The final model's evaluation and the run's ε."""
        return dict(self["final"])

    @property
    def metric(self) -> str:
        """The name of the quality metric: ``eval_accuracy`` | ``eval_perplexity`` (or ``fed_*``, evaluated on the
        clients' own held-out records)."""
        return quality_key(self["final"])

    @property
    def quality(self) -> float:
        """The final model's quality (:attr:`metric`)."""
        return float(self["final"][self.metric])

    @property
    def loss(self) -> float:
        return float(self["final"].get(loss_key(self.metric), math.nan))

    @property
    def epsilon(self) -> float:
        """The ε the run spent (the largest client's; ``inf`` without DP)."""
        return float(self["final"]["epsilon"])

    @property
    def delta(self) -> float:
        return float(self["final"]["delta"])

    @property
    def seconds(self) -> float:
        return float(self["seconds"])

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per round (indexed by round), one column per number in its row; each client's ε as
        ``epsilon/client_<id>``."""
        import pandas

        from privfed.observe.tracking import row_scalars

        frame = pandas.DataFrame([{"round": row["round"], **row_scalars(row, finite_only=False)}
                                  for row in self["rounds"]])
        return frame.set_index("round") if not frame.empty else frame

    def plot(self, path: str | None = None) -> Figure:
        """Quality and ε per round (privfed.plots.plot_rounds); saved to ``path`` when given."""
        from privfed.report.plots import plot_rounds

        return plot_rounds(self, path=path)

    def __repr__(self) -> str:
        return (f"RunResult({self.name!r}: {self.metric} {self.quality:.4g}, ε {self.epsilon:.4g}, "
                f"{len(self['rounds'])} rounds)")


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no config key {key!r} in run {config.get('name')!r}")
        node = node[part]
    return _NON_FINITE.get(node, node) if isinstance(node, str) else node


def compare(runs: Sequence[Mapping[str, Any]], by: str) -> pandas.DataFrame:
    """Runs side by side, grouped by the config key ``by`` (``"privacy.epsilon"``, ``"aggregation.method"``,
    ...): per value, the mean final quality with its 95 % Student-t half-width over the runs (seeds), the mean ε
    spent and the number of runs. Sorted by the value."""
    import pandas

    from privfed.report.intervals import Interval

    if not runs:
        raise ValueError("compare needs at least one run")
    typed = [r if isinstance(r, RunResult) else RunResult.from_json(r) for r in runs]
    metrics = {r.metric for r in typed}
    if len(metrics) > 1:
        raise ValueError(f"the runs measure quality differently ({', '.join(sorted(metrics))}): compare runs of one "
                         "task and evaluation site")
    groups: dict[Any, list[RunResult]] = {}
    for run in typed:
        value = _lookup(run["config"], by)
        if isinstance(value, Mapping):
            raise KeyError(f"{by!r} is a config section; compare by one of its keys ({', '.join(value)})")
        groups.setdefault(value if not isinstance(value, list) else tuple(value), []).append(run)
    metric = metrics.pop()
    rows = []
    for value, members in groups.items():
        quality = Interval.of(r.quality for r in members)
        rows.append({by: value, metric: quality.mean, "± 95 %": quality.half_width,
                     "epsilon": Interval.of(r.epsilon for r in members).mean, "runs": len(members)})
    frame = pandas.DataFrame(rows)
    return frame.sort_values(by, key=lambda column: column.map(_sortable)).reset_index(drop=True)


def _sortable(value: Any) -> Any:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def read_results(path: Path) -> RunResult:
    """A finished run's results.json (a run directory or the file itself), non-finite floats restored."""
    path = Path(path)
    file = path / RESULTS if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (is {path} a finished privfed run?)")
    return RunResult.from_json(json.loads(file.read_text()))
