"""Federated evaluation as the driver runs it: the round's clients evaluate the new global model on their own
held-out records, and their sums travel through a secure sum of the run's aggregation method (see
:mod:`privfed.federation.held_out`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from privfed.aggregation.base import AggregationBackend
from privfed.config import Task
from privfed.federation.held_out import PREFIX, federation_metrics
from privfed.federation.server_view import ServerView
from privfed.server.round_sum import secure_sum

if TYPE_CHECKING:
    from privfed.server.driver import ClientSide


class ClientEvaluation:
    """``backend``: the run's method sized for evaluation contributions; ``per_client``: the method shows the
    server each client's upload (plain), so the round's row lists each client's metrics too."""

    def __init__(self, backend: AggregationBackend, task: Task, per_client: bool):
        self.backend, self.task, self.per_client = backend, task, per_client

    def run(self, round_idx: int, sampled: list[int], clients: ClientSide, global_vector: np.ndarray,
            notes: list[str]) -> dict:
        view = ServerView() if self.per_client else None
        self.backend.prepare_round(round_idx, sampled)
        transport = clients.open_evaluation(round_idx, sampled, global_vector, self.backend)
        outcome = secure_sum(self.backend, round_idx, transport, frozenset(), view)
        if outcome is None or outcome.total is None:
            reason = "no client answered" if outcome is None else outcome.details.get("abort_reason") or "aborted"
            notes.append(f"round {round_idx}: the clients' evaluation did not complete ({reason})")
            return {}
        metrics = federation_metrics(outcome.total, self.task, len(outcome.contributors))
        if view is not None:
            metrics[f"{PREFIX}per_client"] = {
                str(cid): federation_metrics(upload, self.task, 1) for cid, upload in sorted(view.uploads.items())}
        return metrics
