"""The embedded engine: the round driver and every client in one process, with one model for all clients.

The client side is a :class:`~privfed.client.runtime.ClientRuntime` (the one model) plus each client's plain
:class:`~privfed.client.state.ClientState` and its ledger; the server side is the
:class:`~privfed.server.driver.RoundDriver` with its callbacks.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from privfed.aggregation import make_backend
from privfed.aggregation.base import AggregationOutcome
from privfed.client import budget
from privfed.client.runtime import TrainedRound
from privfed.config import DpMode, ExperimentConfig
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.federation.setup import Federation, build_federation
from privfed.observe.checkpoint import Checkpointer
from privfed.observe.evaluation import GlobalEvaluation
from privfed.observe.generations import Generations
from privfed.observe.privacy_report import PrivacyReport, client_epsilons, client_user_epsilons
from privfed.observe.progress import Progress
from privfed.privacy.accounting import history_of
from privfed.privacy.ledger import Ledger, SkippedEvent
from privfed.results import RunDirectory, build_results
from privfed.server.driver import ClientSide, RoundDriver, clients_per_round
from privfed.server.events import Callback, RunState
from privfed.server.strategies import make_strategy

log = logging.getLogger(__name__)


class InProcessClients(ClientSide):
    """Every client of the federation, trained in turn on the federation's one runtime, sharing one ledger."""

    def __init__(self, federation: Federation, ledger: Ledger):
        self.fed, self.ledger = federation, ledger
        self.cfg = federation.config
        self._weight_cap = max(c.num_examples for c in federation.clients)

    @property
    def num_clients(self) -> int:
        return len(self.fed.clients)

    @property
    def weight_cap(self) -> int:
        return self._weight_cap

    def refusal(self, client: int, round_idx: int) -> SkippedEvent | None:
        event = budget.refusal(self.fed.clients[client], self.ledger, round_idx, self.cfg.training.local_steps,
                               self.cfg.privacy)
        if event is not None:
            self.ledger.append(event)
        return event

    def train(self, client: int, round_idx: int, global_vector: np.ndarray) -> TrainedRound:
        state = self.fed.clients[client]
        result = self.fed.runtime.train(state, self.fed.shard(state), round_idx, global_vector,
                                        history_of(self.ledger.dp_sgd(client)))
        if result.event is not None:
            self.ledger.append(result.event)
            if result.accountant_history != history_of(self.ledger.dp_sgd(client)):
                raise PrivacyViolationError(f"client {client}: Opacus' accountant and the ledger disagree")
        return result

    def record_aggregation(self, round_idx: int, outcome: AggregationOutcome) -> None:
        if outcome.noise is not None:
            for cid in outcome.contributors:
                self.ledger.append(outcome.noise.event(cid, round_idx))


def run(cfg: ExperimentConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, callbacks: tuple[Callback, ...] = ()) -> dict:
    """Run (or resume) an experiment, writing every artefact to ``out_dir``; returns the results dict.

    A directory that already holds a run is never replaced by accident: pass ``resume`` to continue it or
    ``overwrite`` to start over. ``callbacks`` are called after privfed's own (evaluation, privacy, checkpoint,
    progress) on every round event.
    """
    run_dir = RunDirectory(out_dir)
    if run_dir.holds_run() and not (resume or overwrite):
        raise ConfigError("--out", f"{out_dir} already holds a privfed run; resume it (--resume), write elsewhere, "
                                   "or start it over (--overwrite)")
    started = time.perf_counter()
    fed = build_federation(cfg)
    state = run_dir.load_checkpoint() if resume else None
    resumed = state is not None
    if state is None:
        state = RunState(0, fed.initial_vector.copy(), {}, Ledger())
    else:
        log.warning("resuming %s after round %d of %d", run_dir.path, state.completed_rounds, cfg.training.rounds)
    log.info("%d clients, %d trainable tensors (%d values, %.2f MB a transfer)", len(fed.clients),
             len(fed.trainable_names), fed.num_trainable, fed.num_trainable * 4 / 1e6)
    client_ids = [c.id for c in fed.clients]
    backend = make_backend(cfg.aggregation, max_clients=clients_per_round(cfg, len(fed.clients)),
                           vector_length=fed.num_trainable + 1, client_ids=client_ids,
                           distributed_noise=cfg.privacy.distributed_noise, update_clip=cfg.privacy.update_clip,
                           progress=progress)
    dp = cfg.privacy.mode is not DpMode.OFF
    bar = Progress(progress)
    # generations are written before the checkpoint, so the file is never behind it
    answers = [Generations(fed, run_dir)] if fed.test_chats and cfg.evaluation.generations else []
    own = [GlobalEvaluation(fed), PrivacyReport(cfg.privacy, client_ids, dp), *answers, Checkpointer(run_dir), bar]
    driver = RoundDriver(cfg, InProcessClients(fed, state.ledger), backend, make_strategy(cfg.federation),
                         [*own, *callbacks])
    with backend:
        if not resumed:
            run_dir.start(cfg)
        try:
            driver.run(state, resumed)
        finally:
            bar.close()
    results = build_results(fed, state, client_epsilons(cfg.privacy, client_ids, state.ledger, dp),
                            time.perf_counter() - started, client_user_epsilons(cfg.privacy, client_ids, state.ledger),
                            run_dir.last_generations())
    run_dir.finish(results)
    for callback in driver.callbacks:
        callback.on_run_end(results)
    return results
