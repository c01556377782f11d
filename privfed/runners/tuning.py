"""``--tune KEY=V1,V2,...``: the hyper-parameter trials a sweep runs at every ε, ∞ included.

One axis is one config key and its values (YAML, as ``--set`` reads them); keys that must move together are joined
with ``/``, their values too (``training.batch_size/training.local_steps=32/8,64/4,128/2``: larger batches, fewer
steps, the same examples processed). The trials are every combination of the axes' values.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from privfed.config import ExperimentConfig, apply_overrides, from_dict, to_dict
from privfed.errors import ConfigError

# Keys the sweep itself sets for every run: tuning them would change what the sweep compares.
SWEEP_KEYS = ("name", "seed", "privacy.mode", "privacy.epsilon", "data.validation_fraction", "data.split_seed")


@dataclass(frozen=True)
class TuneAxis:
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # one tuple per trial value, one entry per key

    @property
    def privacy_only(self) -> bool:
        """Every key is a privacy setting: such an axis means nothing without DP (ε = ∞ runs it once)."""
        return all(k.startswith("privacy.") for k in self.keys)

    def describe(self) -> str:
        shown = ", ".join("/".join(_text(v) for v in value) for value in self.values)
        return f"{'/'.join(self.keys)} ∈ {{{shown}}}"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_tune(text: str) -> TuneAxis:
    """``KEY=V1,V2`` or ``KEY1/KEY2=A1/B1,A2/B2`` as an axis; ConfigError("--tune", ...) for anything else."""
    if "=" not in text:
        raise ConfigError("--tune", f"{text!r} must look like KEY=V1,V2,... (e.g. training.lr=0.005,0.01,0.02)")
    left, right = text.split("=", 1)
    keys = tuple(k.strip() for k in left.split("/"))
    if not all(keys):
        raise ConfigError("--tune", f"{text!r} names an empty key")
    for key in keys:
        if key in SWEEP_KEYS:
            raise ConfigError("--tune", f"{key} is set by the sweep itself (ε by --epsilons, seeds by --seeds, the "
                                        "validation split by --validation-fraction); tune another key")
    if len(set(keys)) != len(keys):
        raise ConfigError("--tune", f"{left} repeats a key")
    parts = [p.strip() for p in right.split(",")]
    if not right.strip() or not all(parts):
        raise ConfigError("--tune", f"{left} has an empty value list; give e.g. {left}=0.005,0.01,0.02")
    values = []
    for part in parts:
        items = part.split("/")
        if len(items) != len(keys):
            raise ConfigError("--tune", f"{part!r} gives {len(items)} values for the {len(keys)} keys {left}")
        values.append(tuple(yaml.safe_load(item) for item in items))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError("--tune", f"{left} repeats a value")
    return TuneAxis(keys, tuple(values))


def check_axes(base: ExperimentConfig, axes: Sequence[TuneAxis]) -> None:
    """Every trial must be a valid config: an unknown key or an impossible value fails here, before any run."""
    keys = [k for axis in axes for k in axis.keys]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError("--tune", f"{', '.join(repeated)} is tuned twice; give each key one --tune")
    for trial in trials(axes):
        try:
            apply_trial(base, trial)
        except ConfigError as err:
            raise ConfigError("--tune", f"{err.key}: {err.problem}") from None


def trials(axes: Sequence[TuneAxis], *, private: bool = True) -> list[dict[str, Any]]:
    """Every combination of the axes' values as ``{key: value}`` (one empty trial without axes). Without DP
    (``private`` False) privacy-only axes drop out: their trials would be the same run."""
    used = [a for a in axes if private or not a.privacy_only]
    combos = itertools.product(*[a.values for a in used])
    return [{k: v for axis, value in zip(used, combo) for k, v in zip(axis.keys, value)} for combo in combos]


def apply_trial(base: ExperimentConfig, trial: dict[str, Any]) -> ExperimentConfig:
    """``base`` with the trial's values set (JSON text is YAML, so each value reads back as it was)."""
    return from_dict(apply_overrides(to_dict(base), [f"{k}={json.dumps(v)}" for k, v in trial.items()]))


def trial_tag(trial: dict[str, Any]) -> str:
    """A trial as part of a run name: ``lr0.01-batch_size64`` (empty for no trial)."""
    return "-".join(f"{k.rsplit('.', 1)[-1]}{_text(v)}" for k, v in trial.items())


def trial_text(trial: dict[str, Any]) -> str:
    """A trial as a table shows it: ``lr=0.01, batch_size=64`` (``–`` for no trial)."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_text(v)}" for k, v in trial.items()) or "–"


def better(metric: str) -> int:
    """+1 when a larger value of ``metric`` is better (accuracy), -1 when smaller is (perplexity, loss)."""
    return 1 if metric.endswith("accuracy") else -1


def best_index(scores: Sequence[float], metric: str) -> int:
    """The index of the best finite score (ties: the first); NaN scores never win."""
    sign = better(metric)
    finite = [(sign * s, -i) for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise ValueError("no trial has a finite validation score")
    return -max(finite)[1]
