"""What a run reports as it goes: typed round events, and the callback interface that receives them.

The round driver samples, broadcasts, drives the aggregation protocol and applies the strategy; everything else
(evaluation, privacy reporting, checkpoints, progress, and later audits, attacks and robust combiners) is a
:class:`Callback`. Callbacks are called in the order given; those that measure fill in the round's
:class:`RoundRecord` in :meth:`Callback.on_round_end`, and those that persist or print read it in
:meth:`Callback.on_round_committed`, once the run state holds the round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from privfed.aggregation.base import AggregationOutcome
from privfed.client.state import ClientUpdate
from privfed.federation.server_view import ServerView
from privfed.privacy.ledger import DpSgdEvent, Ledger, SkippedEvent
from privfed.server.combiner import Combination


@dataclass
class RunState:
    """Everything needed to continue after the last completed round; plain data (arrays, JSON-able values)."""

    completed_rounds: int
    global_vector: np.ndarray
    strategy_state: dict[str, np.ndarray]
    ledger: Ledger
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunStarted:
    state: RunState
    resumed: bool
    plan: str  # the aggregation back-end's cost line ("" when negligible)
    rounds: int
    clients_per_round: int


@dataclass(frozen=True)
class RoundStarted:
    round: int
    sampled: tuple[int, ...]


@dataclass(frozen=True)
class ClientTrained:
    round: int
    update: ClientUpdate
    event: DpSgdEvent | None


@dataclass(frozen=True)
class ClientSkipped:
    round: int
    event: SkippedEvent  # the client's own budget check refused the round


@dataclass(frozen=True)
class RoundAggregated:
    round: int
    outcome: AggregationOutcome  # the sum (None when the round aborted) and the protocol's details
    view: ServerView | None  # what the server received, when a callback asked for it (``needs_server_view``)


@dataclass(frozen=True)
class RoundCombined:
    round: int
    combination: Combination  # which inputs the server read, rejected and kept, and the mean update it made


@dataclass
class RoundRecord:
    """One round as reported: counts and bytes from the driver, metrics from the callbacks."""

    round: int
    clients_trained: int
    clients_skipped: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    aggregation: dict | None = None  # clients_aggregated, dropouts, bytes per client, seconds, details
    evaluation: dict = field(default_factory=dict)  # eval_loss, eval_accuracy | eval_perplexity, per_client
    epsilon: float = math.nan
    user_epsilon: float | None = None
    client_epsilons: dict[str, float] | None = None  # each client's ε so far (DP runs), keyed by its id as text

    def as_row(self) -> dict:
        """The round's row of results.json and metrics.csv."""
        row: dict = {"round": self.round, "clients_trained": self.clients_trained,
                     "clients_skipped": self.clients_skipped, **(self.aggregation or {}),
                     "train_loss": self.train_loss, **self.evaluation, "epsilon": self.epsilon}
        if self.user_epsilon is not None:
            row["user_epsilon"] = self.user_epsilon
        if self.client_epsilons is not None:
            row["client_epsilons"] = self.client_epsilons
        row.update({"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "seconds": self.seconds})
        return row


class Callback:
    """Receives a run's events; every method is optional. Callbacks must not change the global model.

    A callback that sets ``needs_server_view`` gets, in :meth:`on_aggregated`, a
    :class:`~privfed.federation.server_view.ServerView` of each round: every message the server received and each
    upload as the server could read it (recording costs memory, so it is opt-in).
    """

    needs_server_view: bool = False

    def on_run_start(self, event: RunStarted) -> None: ...

    def on_round_start(self, event: RoundStarted) -> None: ...

    def on_client_trained(self, event: ClientTrained) -> None: ...

    def on_client_skipped(self, event: ClientSkipped) -> None: ...

    def on_aggregated(self, event: RoundAggregated) -> None: ...

    def on_combined(self, event: RoundCombined) -> None:
        """After the sum was decoded: what the server's defence made of it (not called for an aborted round)."""

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        """Measure: fill in ``record``. ``state.global_vector`` is already the new global model."""

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        """Persist or report: ``state`` now includes this round."""

    def on_run_end(self, results: dict) -> None: ...

    def on_run_failed(self, error: BaseException) -> None:
        """The run stopped with ``error`` (an exception, or Ctrl-C) before it finished: release what a callback
        holds open (a tracker's run, a file); the error then propagates."""
