"""What every config section is made of: fields that carry their help text, and checks that name the key."""
from __future__ import annotations

from dataclasses import field
from typing import Any

from privfed.errors import ConfigError


def described(text: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (``privfed run --help-config`` and the docs' key reference show it)."""
    return field(metadata={"help": text}, **kwargs)


def check(ok: bool, key: str, problem: str) -> None:
    """Raise :class:`~privfed.errors.ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, problem)
