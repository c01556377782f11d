"""Each round's privacy as reported: every client's epsilon so far and the largest, from the ledger alone."""
from __future__ import annotations

import math

from privfed.config import PrivacyConfig
from privfed.privacy.accounting import epsilon_of_events
from privfed.privacy.distributed import user_epsilon
from privfed.privacy.ledger import Ledger
from privfed.server.events import Callback, RoundRecord, RunState


def client_epsilons(privacy: PrivacyConfig, client_ids: list[int], ledger: Ledger, dp: bool) -> dict[int, float]:
    """Record-level epsilon of each client's DP-SGD so far (inf without DP)."""
    if not dp:
        return {c: math.inf for c in client_ids}
    return {c: epsilon_of_events(ledger.dp_sgd(c), privacy.delta, privacy.accountant) for c in client_ids}


def client_user_epsilons(privacy: PrivacyConfig, client_ids: list[int], ledger: Ledger) -> dict[int, float]:
    """User-level epsilon from distributed DP against the server (inf without it: the sum is not noised)."""
    if privacy.distributed_noise <= 0:
        return {c: math.inf for c in client_ids}
    return {c: user_epsilon(ledger.distributed_dp(c), privacy.delta) for c in client_ids}


class PrivacyReport(Callback):
    def __init__(self, privacy: PrivacyConfig, client_ids: list[int], dp: bool):
        self.privacy, self.client_ids, self.dp = privacy, client_ids, dp

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        epsilons = client_epsilons(self.privacy, self.client_ids, state.ledger, self.dp)
        record.epsilon = max(epsilons.values(), default=0.0)
        if self.dp:
            record.client_epsilons = {str(c): e for c, e in epsilons.items()}
        if self.privacy.distributed_noise > 0:
            record.user_epsilon = max(client_user_epsilons(self.privacy, self.client_ids, state.ledger).values(),
                                      default=0.0)
