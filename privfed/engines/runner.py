"""What every engine shares: the run directory, the server-side callbacks, the round driver and the results.

An engine differs only in how the driver reaches the clients (a :class:`~privfed.server.driver.ClientSide`): the
in-process engine trains them on this process's runtime, the Flower engine sends them messages.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from privfed.aggregation import Side, make_backend
from privfed.config import Aggregation, DpMode, EvaluationSite, ExperimentConfig, check_defence_sizes
from privfed.errors import ConfigError
from privfed.federation.held_out import EVALUATION_VALUES, evaluation_aggregation
from privfed.federation.setup import Federation
from privfed.observe.checkpoint import Checkpointer
from privfed.observe.evaluation import GlobalEvaluation
from privfed.observe.generations import Generations
from privfed.observe.privacy_report import PrivacyReport, client_epsilons, client_user_epsilons
from privfed.observe.progress import Progress
from privfed.privacy.distributed import DistributedDp
from privfed.privacy.ledger import Ledger
from privfed.results import RunDirectory, build_results
from privfed.run_result import RunResult
from privfed.server.combiner import defence_summary
from privfed.server.client_evaluation import ClientEvaluation
from privfed.server.driver import ClientSide, RoundDriver, clients_per_round
from privfed.server.events import Callback, RunState
from privfed.server.strategies import make_strategy

log = logging.getLogger(__name__)


def run_rounds(cfg: ExperimentConfig, out_dir: Path, build: Callable[[ExperimentConfig], Federation],
               make_clients: Callable[[Federation, Ledger], ClientSide], *, resume: bool = False,
               overwrite: bool = False, progress: bool = True, callbacks: tuple[Callback, ...] = (),
               extra_results: Callable[[dict], dict] | None = None) -> RunResult:
    """Build the server's side (``build``: the model, the held-out data, the clients' count), reach the clients
    through ``make_clients(federation, run ledger)``, run or resume the rounds, and write the results;
    ``extra_results(results)`` returns engine-specific fields to add to (or replace in) results.json."""
    run_dir = RunDirectory(out_dir)
    if run_dir.holds_run() and not (resume or overwrite):
        raise ConfigError("--out", f"{out_dir} already holds a privfed run; resume it (--resume), write elsewhere, "
                                   "or start it over (--overwrite)")
    started = time.perf_counter()
    fed = build(cfg)
    state = run_dir.load_checkpoint() if resume else None
    resumed = state is not None
    if state is None:
        state = RunState(0, fed.initial_vector.copy(), {}, Ledger())
    else:
        log.warning("resuming %s after round %d of %d", run_dir.path, state.completed_rounds, cfg.training.rounds)
    log.info("%d clients, %d trainable tensors (%d values, %.2f MB a transfer)", len(fed.clients),
             len(fed.trainable_names), fed.num_trainable, fed.num_trainable * 4 / 1e6)
    check_defence_sizes(cfg, clients_per_round(cfg, len(fed.clients)))  # natural clients: counted only now
    client_ids = [c.id for c in fed.clients]
    clients = make_clients(fed, state.ledger)
    backend = make_backend(cfg.aggregation, max_clients=clients_per_round(cfg, len(fed.clients)),
                           vector_length=fed.num_trainable + 1, client_ids=client_ids,
                           distributed=DistributedDp.from_privacy(cfg.privacy),
                           progress=progress, side=clients.backend_side)
    evaluation = None
    if cfg.evaluation.where is not EvaluationSite.SERVER:  # the clients' own held-out records, summed securely
        evaluation = ClientEvaluation(
            make_backend(evaluation_aggregation(cfg.aggregation), max_clients=clients_per_round(cfg, len(fed.clients)),
                         vector_length=EVALUATION_VALUES, client_ids=client_ids, side=clients.backend_side),
            fed.task, per_client=cfg.aggregation.method is Aggregation.PLAIN)
    dp = cfg.privacy.mode is not DpMode.OFF
    bar = Progress(progress)
    # generations are written before the checkpoint, so the file is never behind it
    answers = [Generations(fed, run_dir)] if fed.test_chats and cfg.evaluation.generations else []
    own = [GlobalEvaluation(fed, pooled_validation=clients.backend_side is Side.BOTH), PrivacyReport(cfg.privacy, client_ids, dp), *answers, Checkpointer(run_dir), bar]
    driver = RoundDriver(cfg, clients, backend, make_strategy(cfg.federation), [*own, *callbacks], evaluation)
    with backend, (evaluation.backend if evaluation is not None else contextlib.nullcontext()):
        if not resumed:
            run_dir.start(cfg)
        try:
            driver.run(state, resumed)
        except BaseException as error:
            for callback in driver.callbacks:
                callback.on_run_failed(error)
            raise
        finally:
            bar.close()
    results = build_results(fed, state, client_epsilons(cfg.privacy, client_ids, state.ledger, dp),
                            time.perf_counter() - started, client_user_epsilons(cfg.privacy, client_ids, state.ledger),
                            run_dir.last_generations())
    results["defence"] = defence_summary(cfg)
    if extra_results is not None:
        results.update(extra_results(results))
    run_dir.finish(results)
    results = RunResult(results)
    for callback in driver.callbacks:
        callback.on_run_end(results)
    return results
