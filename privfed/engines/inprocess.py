"""The embedded engine: the round driver and every client in one process, with one model for all clients.

The client side is a :class:`~privfed.client.runtime.ClientRuntime` (the one model) plus each client's plain
:class:`~privfed.client.state.ClientState` and its ledger; the server side is the
:class:`~privfed.server.driver.RoundDriver` with its callbacks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from privfed.aggregation.base import AggregationBackend
from privfed.aggregation.transport import InProcessTransport, Transport
from privfed.attacks.simulation import AttackSimulation
from privfed.client.procedure import ClientProcedure
from privfed.config import AttackKind, ExperimentConfig
from privfed.engines.runner import run_rounds
from privfed.federation.setup import Federation, build_federation
from privfed.privacy.ledger import Ledger
from privfed.run_result import RunResult
from privfed.server.driver import ClientSide, OnSkipped, OnTrained
from privfed.server.events import Callback


class InProcessClients(ClientSide):
    """Every client of the federation, each running ``procedure`` in turn on the federation's one runtime, sharing
    one ledger (``procedure``: honest clients by default; :class:`~privfed.attacks.clients.MaliciousProcedure`
    for a federation with attackers)."""

    def __init__(self, federation: Federation, ledger: Ledger, procedure: ClientProcedure | None = None):
        self.fed, self.ledger = federation, ledger
        self.procedure = procedure or ClientProcedure(federation.config, federation)
        self._weight_cap = max(c.num_examples for c in federation.clients)

    @property
    def num_clients(self) -> int:
        return len(self.fed.clients)

    @property
    def weight_cap(self) -> int:
        """The largest client's example count: the public FedAvg weight cap."""
        return self._weight_cap

    def open_round(self, round_idx: int, sampled: list[int], global_vector: np.ndarray, backend: AggregationBackend,
                   on_trained: OnTrained, on_skipped: OnSkipped) -> Transport:
        participants = []
        for cid in sampled:  # each client checks its budget before the round: one that refuses never takes part
            skipped = self.procedure.refusal(self.fed.clients[cid], self.ledger, round_idx)
            if skipped is None:
                participants.append(cid)
            else:
                on_skipped(skipped)

        def provide_update(cid: int) -> np.ndarray:
            result = self.procedure.train(self.fed.clients[cid], round_idx, global_vector, self.ledger)
            on_trained(result.update, result.event)
            return self.procedure.upload(result.update, round_idx, self.weight_cap)

        halves = {c: self.procedure.half(backend.client_half(round_idx, c), round_idx) for c in participants}
        return InProcessTransport(halves, provide_update)

    def open_evaluation(self, round_idx: int, participants: list[int], global_vector: np.ndarray,
                        backend: AggregationBackend) -> Transport:
        halves = {c: backend.client_half(round_idx, c) for c in participants}
        return InProcessTransport(
            halves, lambda cid: self.procedure.evaluation_input(cid, global_vector, self.weight_cap))


def run(cfg: ExperimentConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, callbacks: tuple[Callback, ...] = ()) -> RunResult:
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
    return run_rounds(cfg, out_dir, attack.build, lambda fed, ledger: InProcessClients(fed, ledger, attack.procedure),
                      resume=resume, overwrite=overwrite, progress=progress, callbacks=(attack.observer, *callbacks),
                      extra_results=attack.extra_results)
