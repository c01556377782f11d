"""The ``flower:`` section: the Flower engine's waits."""
from __future__ import annotations

import math
from dataclasses import dataclass

from privfed.config.fields import check, described


@dataclass(frozen=True)
class FlowerConfig:
    """The Flower engine's waits (``privfed flower``; the in-process engine ignores them). A node that does not
    answer in time is a dropout of the round."""

    stage_timeout: float = described("seconds a node has to answer a protocol message that needs no training",
                                     default=120.0)
    train_timeout: float = described("seconds a node has to train and answer the message asking for its update",
                                     default=1800.0)
    connect_timeout: float = described("seconds the ServerApp waits for a node of every client to connect",
                                       default=600.0)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        for key in ("stage_timeout", "train_timeout", "connect_timeout"):
            value = getattr(self, key)
            check(value > 0 and math.isfinite(value), f"flower.{key}",
                  f"must be a positive number of seconds, got {value}")
