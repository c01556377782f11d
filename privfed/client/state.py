"""A client as plain data: who it is, where its shard is, how it samples and how much noise it adds.

Nothing here is a torch object, so a federation of a thousand clients costs a thousand small records, and a node
that restarts between messages can rebuild its client from configuration and its ledger alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ClientState:
    """One client's persistent, torch-free state. Its privacy history lives in the ledger, keyed by ``id``."""

    id: int
    shard: np.ndarray  # indices of its examples in the federation's tokenised training pool
    sample_rate: float  # Poisson sampling rate q of its DP-SGD (1 / ceil(n / batch_size))
    noise_multiplier: float | None  # None: DP off

    @property
    def num_examples(self) -> int:
        return len(self.shard)


@dataclass(frozen=True)
class ClientUpdate:
    """What a client produces in a round, before aggregation protects it."""

    client: int
    delta: np.ndarray | None  # trained - global, over the trainable tensors; None where it never left its node
    num_examples: int
    train_loss: float
    steps: int
    seconds: float
