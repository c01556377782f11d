"""The round driver: sample clients, broadcast the global state, drive the aggregation protocol, apply the strategy.

It owns every round's server half, its simulated dropouts and the server's view on every engine, and knows the
clients only through :class:`ClientSide`, which opens a transport to them (in this process, or one node per
organisation behind Flower). Everything else it reports through typed events to callbacks, so evaluation,
checkpoints, printing, audits and attacks never branch inside the loop. Every random choice of round r derives from
(seed, r, ...), so a run resumed from its last checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from privfed.aggregation.base import AggregationBackend, AggregationOutcome, Side
from privfed.aggregation.grouped import merged_outcome
from privfed.aggregation.transport import Transport
from privfed.client.state import ClientUpdate
from privfed.config import ExperimentConfig
from privfed.federation.server_view import ServerView
from privfed.federation.vectors import derive_seed
from privfed.privacy.adaptive_clip import AdaptiveClip
from privfed.privacy.ledger import DpSgdEvent, Ledger, SkippedEvent
from privfed.server.client_evaluation import ClientEvaluation
from privfed.server.combiner import UpdateCombiner, group_assignment
from privfed.server.round_sum import secure_sum
from privfed.server.events import (
    Callback,
    ClientSkipped,
    ClientTrained,
    RoundAggregated,
    RoundCombined,
    RoundRecord,
    RoundStarted,
    RunStarted,
    RunState,
)
from privfed.server.strategies import ServerStrategy


def clients_per_round(cfg: ExperimentConfig, num_clients: int) -> int:
    return max(1, round(cfg.federation.client_fraction * num_clients))


def sample_clients(cfg: ExperimentConfig, round_idx: int, num_clients: int) -> list[int]:
    rng = np.random.default_rng(derive_seed(cfg.seed, round_idx, 0x5A3B1E))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round(cfg, num_clients), replace=False))


def sample_dropouts(cfg: ExperimentConfig, round_idx: int, participants: list[int]) -> frozenset[int]:
    """The simulated dropouts of a round: round(fraction * participants) of them, drawn from (seed, round)."""
    k = round(cfg.aggregation.dropout_fraction * len(participants))
    if k == 0:
        return frozenset()
    rng = np.random.default_rng(derive_seed(cfg.seed, round_idx, 0xD809))
    return frozenset(int(c) for c in rng.choice(participants, size=k, replace=False))


OnTrained = Callable[[ClientUpdate, DpSgdEvent | None], None]
OnSkipped = Callable[[SkippedEvent], None]


class ClientSide(abc.ABC):
    """The clients as the driver reaches them: in this process, or one node per organisation behind Flower.

    An engine only carries messages: for each round it opens a transport to the sampled clients, and the driver
    makes the server half, draws the simulated dropouts, taps the server's view and runs the protocol over it —
    the same on every engine. Each client runs :class:`~privfed.client.procedure.ClientProcedure` where it is,
    checks its own budget (its ledger is where the client is) and reports a refusal through ``on_skipped``; a
    client that trains reports its summary and DP event through ``on_trained``.
    """

    @property
    @abc.abstractmethod
    def num_clients(self) -> int: ...

    ledger: Ledger  # the run's ledger: every event of this run's clients (on Flower, the copy the nodes report)
    backend_side: Side = Side.BOTH  # the protocol halves the driver's back-end makes: both in process, or the server's

    @abc.abstractmethod
    def open_round(self, round_idx: int, sampled: list[int], global_vector: np.ndarray, backend: AggregationBackend,
                   on_trained: OnTrained, on_skipped: OnSkipped) -> Transport:
        """The transport to the round's clients for the sum of their updates: each trains from ``global_vector``
        when its input message is due and hands its contribution
        (:func:`~privfed.client.procedure.contribution`) to its half of ``backend``'s protocol. Its participants
        are the clients the server half is made for: in process the sampled clients whose budget allows the round
        (checked now); over Flower every sampled client (a node checks its budget in its first message and is
        then in the transport's ``skipped``)."""

    @abc.abstractmethod
    def open_evaluation(self, round_idx: int, participants: list[int], global_vector: np.ndarray,
                        backend: AggregationBackend) -> Transport:
        """The transport for the round's federated evaluation: each participant scores ``global_vector`` on its
        own held-out records (:meth:`~privfed.client.procedure.ClientProcedure.evaluation_input`)."""

    def record_aggregation(self, round_idx: int, outcome: AggregationOutcome) -> None:
        """After the sum: contributors record what entering it cost them (distributed-DP noise shares)."""
        if outcome.noise is not None:
            for cid in outcome.contributors:
                self.ledger.append(outcome.noise.event(cid, round_idx))


class RoundDriver:
    def __init__(self, cfg: ExperimentConfig, clients: ClientSide, backend: AggregationBackend, strategy: ServerStrategy,
                 callbacks: Sequence[Callback], evaluation: ClientEvaluation | None = None):
        self.cfg, self.clients, self.backend, self.strategy = cfg, clients, backend, strategy
        self.evaluation = evaluation  # federated evaluation (evaluation.where clients | both), after each round
        self.callbacks = list(callbacks)
        self.combiner = UpdateCombiner(cfg)
        pr = cfg.privacy
        self.clip = None  # adaptive clipping's state (distributed DP with privacy.clip_quantile)
        if pr.distributed_noise > 0 and pr.clip_quantile > 0:
            self.clip = AdaptiveClip(pr.clip_quantile, pr.clip_learning_rate, backend.encoding.step,
                                     pr.max_update_clip, pr.update_clip)

    def _emit(self, method: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(*args)

    def run(self, state: RunState, resumed: bool) -> RunState:
        """Rounds ``state.completed_rounds + 1 .. cfg.training.rounds``; ``state`` is updated in place."""
        if resumed:
            self.strategy.load_state_dict(state.strategy_state)
            self.combiner.load_state_dict(state.strategy_state)
            if self.clip is not None:
                self.clip.load_state_dict(state.strategy_state)
        self._emit("on_run_start", RunStarted(state, resumed, self.backend.plan(), self.cfg.training.rounds,
                                              clients_per_round(self.cfg, self.clients.num_clients)))
        for r in range(state.completed_rounds + 1, self.cfg.training.rounds + 1):
            self._round(r, state)
        return state

    def _round(self, r: int, state: RunState) -> None:
        start = time.perf_counter()
        sampled = sample_clients(self.cfg, r, self.clients.num_clients)
        if self.clip is not None:
            self.backend.set_update_clip(self.clip.clip)
        self.backend.prepare_round(r, sampled)
        self._emit("on_round_start", RoundStarted(r, tuple(sampled)))
        trained: dict[int, tuple[float, int]] = {}  # (train loss, examples): a round keeps no update once summed
        skipped: list[int] = []

        def on_trained(update: ClientUpdate, event: DpSgdEvent | None) -> None:
            trained[update.client] = (update.train_loss, update.num_examples)
            self._emit("on_client_trained", ClientTrained(r, update, event))

        def on_skipped(event: SkippedEvent) -> None:
            skipped.append(event.client)
            state.notes.append(f"round {r}: client {event.client} did not train: epsilon would reach "
                               f"{event.epsilon_if_trained:.3f} > budget {event.budget:g}")
            self._emit("on_client_skipped", ClientSkipped(r, event))

        wants_view = self.combiner.reads_uploads or any(c.needs_server_view for c in self.callbacks)
        view = ServerView() if wants_view else None
        groups = group_assignment(self.cfg, r, sampled)
        outcomes, simulated_dropouts = [], 0
        for members in groups:
            transport = self.clients.open_round(r, members, state.global_vector, self.backend, on_trained, on_skipped)
            dropouts = sample_dropouts(self.cfg, r, transport.participants)
            outcomes.append(secure_sum(self.backend, r, transport, dropouts, view))
            simulated_dropouts += len(dropouts) if outcomes[-1] is not None else 0
        outcome = outcomes[0] if len(groups) == 1 else merged_outcome(groups, outcomes)
        aggregation, bytes_up, bytes_down_protocol = None, 0, 0
        if outcome is not None:
            self._emit("on_aggregated", RoundAggregated(r, outcome, view))
            bytes_up, bytes_down_protocol = outcome.bytes_up_total, outcome.bytes_down_total
            aggregation = {"clients_aggregated": len(outcome.contributors), "dropouts": simulated_dropouts,
                           "bytes_up_per_client": outcome.bytes_up_per_client,
                           "bytes_down_per_client": outcome.bytes_down_per_client + state.global_vector.size * 4,
                           "aggregation_seconds": outcome.seconds, "aggregation": outcome.details}
            if outcome.total is None:
                reason = outcome.details.get("abort_reason") or "aborted"
                state.notes.append(f"round {r}: aggregation aborted ({reason}); the global model is unchanged")
            else:
                combination = self.combiner.combine(outcome, view)
                self._emit("on_combined", RoundCombined(r, combination))
                if combination.update is None:
                    state.notes.append(f"round {r}: no update ({combination.reason}); the global model is unchanged")
                else:
                    state.global_vector = self.strategy.apply(state.global_vector,
                                                              combination.update).astype(np.float32)
            # a sum the server decoded cost its contributors their noise share, even one that wrapped
            self.clients.record_aggregation(r, outcome)
            if outcome.total is not None and self.clip is not None and outcome.under_clip is not None:
                aggregation["next_update_clip"] = self.clip.observe(outcome.under_clip, len(outcome.contributors))
        else:
            state.notes.append(f"round {r}: no client trained; the global model is unchanged")
        held_out = {} if self.evaluation is None else \
            self.evaluation.run(r, sampled, self.clients, state.global_vector, state.notes)
        # a client whose every Poisson batch came out empty has no loss to report: average over those that do
        losses = [loss for loss, _ in trained.values() if math.isfinite(loss)]
        weights = [n for loss, n in trained.values() if math.isfinite(loss)]
        record = RoundRecord(
            round=r, clients_trained=len(trained), clients_skipped=len(skipped),
            train_loss=float(np.average(losses, weights=weights)) if losses else math.nan,
            bytes_up=bytes_up,
            bytes_down=len(sampled) * state.global_vector.size * 4 + bytes_down_protocol,
            seconds=0.0, aggregation=aggregation, evaluation=held_out)
        self._emit("on_round_end", record, state)
        record.seconds = time.perf_counter() - start
        state.rows.append(record.as_row())
        state.completed_rounds = r
        state.strategy_state = {**self.strategy.state_dict(), **self.combiner.state_dict(),
                                **(self.clip.state_dict() if self.clip is not None else {})}
        self._emit("on_round_committed", record, state)

