"""A client's own budget check: before it trains, it refuses a round that would take its epsilon past its budget.

The check runs where the client's ledger is (on a real node, the data holder enforces its own budget), from the
ledger alone: no accountant object has to stay alive between rounds.
"""
from __future__ import annotations

import math

from privfed.client.state import ClientState
from privfed.config import DpMode, PrivacyConfig
from privfed.privacy.accounting import epsilon_of_history, history_of
from privfed.privacy.ledger import Ledger, SkippedEvent


def budget_of(privacy: PrivacyConfig) -> float:
    """The epsilon a client may spend: the target (calibrated runs) or max_epsilon (fixed noise; inf = no cap)."""
    return privacy.epsilon if privacy.mode is DpMode.TARGET_EPSILON else privacy.max_epsilon


def refusal(client: ClientState, ledger: Ledger, round_idx: int, local_steps: int,
            privacy: PrivacyConfig) -> SkippedEvent | None:
    """The event recording why ``client`` will not train this round, or None when its budget allows it."""
    budget = budget_of(privacy)
    if client.noise_multiplier is None or not math.isfinite(budget):
        return None
    planned = (client.noise_multiplier, client.sample_rate, local_steps)
    epsilon_if_trained = epsilon_of_history(history_of(ledger.dp_sgd(client.id)) + [planned], privacy.delta,
                                            privacy.accountant)
    if epsilon_if_trained > budget * (1 + 1e-9):
        return SkippedEvent(client.id, round_idx, epsilon_if_trained, budget)
    return None
