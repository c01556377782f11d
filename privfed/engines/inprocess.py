"""The embedded engine: the round driver and every client in one process, with one model for all clients.

The client side is a :class:`~privfed.client.runtime.ClientRuntime` (the one model) plus each client's plain
:class:`~privfed.client.state.ClientState` and its ledger; the server side is the
:class:`~privfed.server.driver.RoundDriver` with its callbacks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from privfed.aggregation.base import AggregationBackend, AggregationOutcome
from privfed.attacks.clients import MaliciousClients
from privfed.attacks.simulation import AttackSimulation
from privfed.client import budget
from privfed.client.recorded import train_recorded
from privfed.client.runtime import TrainedRound
from privfed.config import AttackKind, ExperimentConfig
from privfed.engines.runner import run_rounds
from privfed.evaluation import evaluation_sums
from privfed.federation.held_out import evaluation_contribution, evaluation_scale
from privfed.federation.server_view import ServerView
from privfed.federation.setup import Federation, build_federation
from privfed.privacy.ledger import Ledger, SkippedEvent
from privfed.server.driver import (
    ClientRound,
    ClientSide,
    OnSkipped,
    OnTrained,
    contribution,
    sample_dropouts,
)
from privfed.server.events import Callback


class InProcessClients(ClientSide):
    """Every client of the federation, trained in turn on the federation's one runtime, sharing one ledger."""

    def __init__(self, federation: Federation, ledger: Ledger, malicious: MaliciousClients | None = None):
        self.fed, self.ledger, self.malicious = federation, ledger, malicious
        self.cfg = federation.config
        self._weight_cap = max(c.num_examples for c in federation.clients)

    @property
    def num_clients(self) -> int:
        return len(self.fed.clients)

    @property
    def weight_cap(self) -> int:
        """The largest client's example count: the public FedAvg weight cap."""
        return self._weight_cap

    def run_round(self, round_idx: int, sampled: list[int], global_vector: np.ndarray, backend: AggregationBackend,
                  view: ServerView | None, on_trained: OnTrained, on_skipped: OnSkipped) -> ClientRound:
        participants = []
        for cid in sampled:
            attacker = self.malicious is not None and self.malicious.ignores_budget(cid, round_idx)
            skipped = None if attacker else self._refusal(cid, round_idx)
            if skipped is None:
                participants.append(cid)
            else:
                on_skipped(skipped)
        if not participants:
            return ClientRound(None, 0)

        def provide_update(cid: int) -> np.ndarray:
            result = self._train(cid, round_idx, global_vector)
            on_trained(result.update, result.event)
            if self.malicious is not None and self.malicious.attacking(cid, round_idx):
                return self.malicious.contribution(result.update, round_idx, self.weight_cap)
            return contribution(self.cfg, result.update.delta, result.update.num_examples, self.weight_cap)

        dropouts = sample_dropouts(self.cfg, round_idx, participants)
        if self.malicious is not None:
            backend = self.malicious.wrap(backend, round_idx)
        return ClientRound(backend.run_round(round_idx, participants, provide_update, dropouts, view), len(dropouts))

    def evaluate_round(self, round_idx: int, participants: list[int], global_vector: np.ndarray,
                       backend: AggregationBackend, view: ServerView | None) -> AggregationOutcome | None:
        if not participants:
            return None
        runtime = self.fed.runtime
        runtime.load(global_vector)
        scale = evaluation_scale(self.cfg, self.fed.task, self.weight_cap)

        def provide(cid: int) -> np.ndarray:  # honest code, attackers included: the evaluation is not attacked
            sums = evaluation_sums(runtime.model, self.fed.held_out(cid), self.fed.task, explicit=runtime.explicit)
            return evaluation_contribution(sums, scale)

        return backend.run_round(round_idx, participants, provide, frozenset(), view)

    def _refusal(self, client: int, round_idx: int) -> SkippedEvent | None:
        event = budget.refusal(self.fed.clients[client], self.ledger, round_idx, self.cfg.training.local_steps,
                               self.cfg.privacy)
        if event is not None:
            self.ledger.append(event)
        return event

    def _train(self, client: int, round_idx: int, global_vector: np.ndarray) -> TrainedRound:
        poisoned = None if self.malicious is None else self.malicious.state_for(client, round_idx)
        state = poisoned or self.fed.clients[client]
        steps = None if poisoned is None else self.malicious.local_steps
        return train_recorded(self.fed.runtime, state, self.fed.shard(state), round_idx, global_vector, self.ledger,
                              steps)



def run(cfg: ExperimentConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Run (or resume) an experiment in this process, writing every artefact to ``out_dir``; returns the results.

    A directory that already holds a run is never replaced by accident: pass ``resume`` to continue it or
    ``overwrite`` to start over. ``callbacks`` are called after privfed's own (evaluation, privacy, checkpoint,
    progress) on every round event. A config with an ``attack`` runs its malicious clients
    (:mod:`privfed.attacks`) and adds their metrics to the results.
    """
    if cfg.attack.kind is AttackKind.NONE:
        return run_rounds(cfg, out_dir, build_federation, lambda fed, ledger: InProcessClients(fed, ledger),
                          resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)
    attack = AttackSimulation(cfg)
    return run_rounds(cfg, out_dir, attack.build, lambda fed, ledger: InProcessClients(fed, ledger, attack.malicious),
                      resume=resume, overwrite=overwrite, progress=progress, callbacks=(attack.observer, *callbacks),
                      extra_results=attack.extra_results)
