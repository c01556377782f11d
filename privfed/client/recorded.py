"""A client's round as its ledger sees it: train, append the DP event, and check Opacus' accountant agrees.

Used wherever the client's ledger lives: the in-process engine (one ledger for the run) and a Flower node (its own
ledger file, kept across runs).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import TensorDataset

from privfed.client.runtime import ClientRuntime, TrainedRound
from privfed.client.state import ClientState
from privfed.errors import PrivacyViolationError
from privfed.privacy.accounting import history_of
from privfed.privacy.ledger import Ledger


def train_recorded(runtime: ClientRuntime, client: ClientState, shard: TensorDataset, round_idx: int,
                   global_vector: np.ndarray, ledger: Ledger, local_steps: int | None = None) -> TrainedRound:
    """Local training of ``client`` from ``global_vector``; its DP event is appended to ``ledger``, and a run whose
    Opacus accountant disagrees with the ledger stops (PrivacyViolationError): the ledger is what budgets trust."""
    result = runtime.train(client, shard, round_idx, global_vector, history_of(ledger.dp_sgd(client.id)),
                           local_steps)
    if result.event is not None:
        ledger.append(result.event)
        if result.accountant_history != history_of(ledger.dp_sgd(client.id)):
            raise PrivacyViolationError(f"client {client.id}: Opacus' accountant and the ledger disagree")
    return result
