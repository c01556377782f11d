"""Configs to and from plain data: YAML files, ``--set key=value`` overrides, the built-in configs (package data),
keys renamed since earlier versions, and the one-line-per-key help that ``--help-config`` and the docs show."""
from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from privfed.config.experiment import ExperimentConfig
from privfed.errors import ConfigError


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Turn a YAML value into the annotated type, or raise ConfigError naming the key and what is allowed."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        allowed = [m.value for m in annotation]
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean
            value = "on" if value else "off"
        if isinstance(value, str) and value in allowed:
            return annotation(value)
        raise ConfigError(key, f"got {value!r}; allowed: {', '.join(allowed)}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        primary = getattr(annotation, "PRIMARY_KEY", None)
        if primary is not None and isinstance(value, (str, bool)):  # `aggregation: secagg` = {method: secagg}
            value = {primary: value}
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping of {[f.name for f in dataclasses.fields(annotation)]}")
        return _build(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", item_type, v) for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, str):
            return _float_text(key, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error, not user error


def _float_text(key: str, text: str) -> float:
    """A number YAML left as a string: ``inf`` and, because PyYAML follows YAML 1.1, ``1e-5`` (no dot, no sign)."""
    word = text.strip().lower()
    try:
        return math.inf if word in ("inf", "infinity", ".inf") else float(word)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {text!r}") from None


RENAMED_KEYS = {"data.dataset": "data.source", "federation.aggregation": "aggregation.method"}  # old -> new


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if f"{prefix}{key}" in RENAMED_KEYS:
            raise ConfigError(f"{prefix}{key}", f"renamed: use {RENAMED_KEYS[prefix + key]}")
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{prefix}{k}", hints[k], v) for k, v in raw.items()}
    return cls(**kwargs)


def _migrate(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read configs written by earlier privfed versions (:data:`RENAMED_KEYS`): ``federation.aggregation`` became
    ``aggregation.method``, ``data.dataset`` became ``data.source``. A file that sets both names, or a ``--set``
    of the old name on a config that has the new one, is refused with the new name."""
    data = raw.get("data")
    if isinstance(data, Mapping) and "dataset" in data and "source" not in data:
        raw = dict(raw)
        raw["data"] = {("source" if k == "dataset" else k): v for k, v in data.items()}
    federation = raw.get("federation")
    if isinstance(federation, Mapping) and "aggregation" in federation and "aggregation" not in raw:
        raw = dict(raw)
        raw["federation"] = {k: v for k, v in federation.items() if k != "aggregation"}
        raw["aggregation"] = {"method": federation["aggregation"]}
    return raw


def _implied(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Defaults that follow from other keys: ``data.clients`` without ``data.source`` means no shared source
    (data.source's default is the built-in bbc_news)."""
    data = raw.get("data")
    if isinstance(data, Mapping) and data.get("clients") and "source" not in data:
        raw = {**raw, "data": {**data, "source": ""}}
    return raw


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested plain data (as read from YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", "the config file must hold a mapping")
    return _build(ExperimentConfig, _implied(_migrate(raw)))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable form of a config (enums as their values, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        elif isinstance(value, float) and math.isinf(value):
            value = "inf"
        out[f.name] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to nested plain data, returning a new dict."""
    import copy

    result = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        primary = _primary_key_of(parts)
        if primary is not None:  # `--set aggregation=secagg` means aggregation.method=secagg
            parts.append(primary)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return result


def _primary_key_of(parts: list[str]) -> str | None:
    """The PRIMARY_KEY of the config section that ``parts`` names, if it names a section that has one."""
    cls: Any = ExperimentConfig
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return getattr(cls, "PRIMARY_KEY", None) if dataclasses.is_dataclass(cls) else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the built-in demo, ``builtin/demo.yaml``, when ``path`` is None) and apply ``--set``
    overrides."""
    if path is None:
        raw: dict[str, Any] = builtin_config_data("demo")
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"no such file: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError("--config", f"{p} is not valid YAML: {err}") from None
    return from_dict(apply_overrides(raw, overrides or []))


def dump_yaml(config: ExperimentConfig) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def help_lines(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """One line per key with its default and help text (used by ``privfed run --help-config``)."""
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += help_lines(type(default), f"{prefix}{f.name}.")
            continue
        shown = default.value if isinstance(default, enum.Enum) else default
        lines.append(f"{prefix}{f.name} = {shown!r}  # {f.metadata.get('help', '')}")
    return lines


BUILTIN_CONFIGS = ("demo", "attack_grid")  # privfed/config/builtin/<name>.yaml, package data


def builtin_config_data(name: str) -> dict[str, Any]:
    """A built-in config as plain data (``demo``: ``privfed run``'s default; ``attack_grid``: the tiny grid's base)."""
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"no built-in config {name!r}; built in: {', '.join(BUILTIN_CONFIGS)}")
    return yaml.safe_load(resources.files("privfed.config").joinpath("builtin", f"{name}.yaml").read_text())


def builtin_config(name: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """A built-in config with ``--set`` overrides applied."""
    return from_dict(apply_overrides(builtin_config_data(name), overrides or []))
