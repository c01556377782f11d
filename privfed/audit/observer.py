"""The audit's round hook: what the audited client uploaded, what the server could read of it, and the sum.

It records, every round, the values at the canaries' coordinates that the one-run audit scores (the client's
update, the server's reading of its upload under the run's back-end, the aggregate) and, for the reconstruction
attacks, the three observations of the first round the client trained in (from the initial model when it was
sampled in round 1: the classic attack setting, nothing else has happened yet).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privfed.audit.reconstruction import readable_update
from privfed.audit.target import AuditTarget
from privfed.server.events import Callback, ClientTrained, RoundAggregated, RoundRecord, RoundStarted, RunState


@dataclass
class Observation:
    """One thing the audit looks at: its first round's value and, every round, its values at the canaries'
    coordinates (all the one-run audit scores; a few thousand numbers, whatever the model's size)."""

    coordinates: np.ndarray | None = None  # the canaries' coordinates (None: no one-run audit)
    canary_rounds: list[np.ndarray] = field(default_factory=list)
    first: np.ndarray | None = None  # the first round's value
    readable: bool = True  # False: the server could not read floats (Paillier ciphertexts)

    @property
    def rounds(self) -> int:
        return len(self.canary_rounds) if self.coordinates is not None else int(self.first is not None)

    def add(self, value: np.ndarray | None, first_candidate: bool = True) -> None:
        """Record one round's value; ``first_candidate`` False keeps it out of :attr:`first` (an aggregate of a
        round the audited client was not in)."""
        if value is None:
            self.readable = False
            return
        value = np.asarray(value, dtype=np.float64)
        if self.first is None and first_candidate:
            self.first = value.copy()
        if self.coordinates is not None:
            self.canary_rounds.append(value[self.coordinates].copy())

    def at_canaries(self) -> np.ndarray | None:
        """[rounds, m]: the values at the canaries' coordinates, round by round (None: never seen)."""
        return np.stack(self.canary_rounds) if self.canary_rounds else None


@dataclass
class AuditObserver(Callback):
    """Attach to a run whose federation :func:`~privfed.audit.target.prepare_target` prepared."""

    target: AuditTarget | None = None  # set once the federation is built
    vector_length: int = 0
    upload: Observation = field(default_factory=Observation)  # the client's own update (what it uploads in clear)
    server_view: Observation = field(default_factory=Observation)  # its upload as the run's back-end shows it
    aggregate: Observation = field(default_factory=Observation)  # the sum's mean update
    final_vector: np.ndarray | None = None
    needs_server_view: bool = False  # set by watch(): only a back-end that hides uploads has a view worth reading
    _trained: bool = False  # the audited client trained in the current round

    def watch(self, target: AuditTarget, vector_length: int, hides_uploads: bool) -> None:
        """Start observing ``target`` (called once its federation is built)."""
        self.target, self.vector_length = target, vector_length
        self.needs_server_view = hides_uploads
        coordinates = target.canaries.coordinates if target.canaries is not None else None
        self.upload, self.server_view, self.aggregate = (Observation(coordinates) for _ in range(3))

    def on_round_start(self, event: RoundStarted) -> None:
        self._trained = False

    def on_client_trained(self, event: ClientTrained) -> None:
        if self.target is not None and event.update.client == self.target.client and event.update.delta is not None:
            self.upload.add(event.update.delta)
            self._trained = True

    def on_aggregated(self, event: RoundAggregated) -> None:
        if self.target is None:
            return
        if event.view is not None and self.target.client in event.view.uploads:
            self.server_view.add(readable_update(event.view.uploads[self.target.client], self.vector_length))
        total = event.outcome.total
        if total is not None and total[-1] > 0:
            self.aggregate.add(total[:-1] / total[-1], first_candidate=self._trained)

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        self.final_vector = state.global_vector.copy()
