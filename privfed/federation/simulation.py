"""The in-process round loop: sample clients, train them under DP-SGD, aggregate, update, evaluate, checkpoint.

Every random choice of round r derives from (seed, r, client), so a run resumed from its last checkpoint
continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from privfed.aggregation import AggregationBackend as Aggregator
from privfed.aggregation import make_backend as make_aggregator
from privfed.config import DpMode, ExperimentConfig
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.evaluation import evaluate
from privfed.federation.setup import Federation, build_federation
from privfed.federation.strategies import ServerStrategy, make_strategy
from privfed.federation.vectors import derive_seed, flatten, load_into
from privfed.privacy.accounting import epsilon_of_events, epsilon_of_history, history_of
from privfed.privacy.distributed import user_epsilon
from privfed.privacy.ledger import Ledger, SkippedEvent
from privfed.results import RunDirectory, build_results

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What a checkpoint holds: enough to continue after the last completed round."""

    completed_rounds: int
    global_vector: np.ndarray
    strategy_state: dict
    ledger: Ledger
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial: dict = field(default_factory=dict)


def sample_clients(cfg: ExperimentConfig, round_idx: int, num_clients: int) -> list[int]:
    k = max(1, round(cfg.federation.client_fraction * num_clients))
    rng = np.random.default_rng(derive_seed(cfg.seed, round_idx, 0x5A3B1E))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def sample_dropouts(cfg: ExperimentConfig, round_idx: int, trained: list[int]) -> frozenset[int]:
    """The simulated dropouts of a round: round(fraction * trained) of them, drawn from (seed, round)."""
    k = round(cfg.aggregation.dropout_fraction * len(trained))
    if k == 0:
        return frozenset()
    rng = np.random.default_rng(derive_seed(cfg.seed, round_idx, 0xD809))
    return frozenset(int(c) for c in rng.choice(trained, size=k, replace=False))


def contribution(cfg: ExperimentConfig, delta: np.ndarray, num_examples: int, weight_cap: int) -> np.ndarray:
    """What a client hands to aggregation: ``[w * delta, w]``, so the sum gives the weighted mean update.

    FedAvg weights w = n_i / n_max (n_max, the largest client, plays the public weight cap of DP-FedAvg) keep every
    transmitted value within the encoding's range. Under distributed DP the update is clipped to L2 norm S and
    weighted 1: a client's influence on the sum must be bounded by S whatever its size.
    """
    if cfg.privacy.distributed_noise > 0:
        norm = float(np.linalg.norm(delta))
        clipped = delta * min(1.0, cfg.privacy.update_clip / norm) if norm > 0 else delta
        return np.append(clipped.astype(np.float64), 1.0)
    weight = num_examples / weight_cap
    return np.append(delta.astype(np.float64) * weight, weight)


def _aggregation_note(row: dict) -> str:
    """' [secagg: 5/5 summed, 2 dropped, ...]' for the round line; empty for plain rounds without dropouts."""
    details = row.get("aggregation") or {}
    if "protocol" not in details and not row.get("dropouts"):
        return ""
    parts = [f"{row['clients_aggregated']}/{row['clients_trained']} summed"]
    if row.get("dropouts"):
        parts.append(f"{row['dropouts']} dropped")
    if details.get("dropouts_recovered"):
        parts.append(f"{details['dropouts_recovered']} masks recovered")
    if "word_bits" in details:
        parts.append(f"{details['word_bits']}-bit words")
    if "slots_per_ciphertext" in details:
        parts.append(f"{details['slots_per_ciphertext']} values/ciphertext, "
                     f"{details.get('encrypt_seconds', 0):.1f} s encrypt/client")
    if "protocol" in details:
        parts.append(f"{row['bytes_up_per_client'] / 1e6:.2f} MB up/client")
    return f" [{details.get('protocol', 'plain')}: {', '.join(parts)}]"


def budget_of(cfg: ExperimentConfig) -> float:
    pr = cfg.privacy
    return pr.epsilon if pr.mode is DpMode.TARGET_EPSILON else pr.max_epsilon


def client_epsilons(fed: Federation, ledger: Ledger) -> dict[int, float]:
    pr = fed.config.privacy
    if pr.mode is DpMode.OFF:
        return {c.id: math.inf for c in fed.clients}
    return {c.id: epsilon_of_events(ledger.dp_sgd(c.id), pr.delta, pr.accountant) for c in fed.clients}


def client_user_epsilons(fed: Federation, ledger: Ledger) -> dict[int, float]:
    """User-level epsilon from distributed DP against the server (inf without it: the sum is not noised)."""
    if fed.config.privacy.distributed_noise <= 0:
        return {c.id: math.inf for c in fed.clients}
    return {c.id: user_epsilon(ledger.distributed_dp(c.id), fed.config.privacy.delta) for c in fed.clients}


def run(cfg: ExperimentConfig, out_dir: Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> dict:
    """Run (or resume) an experiment, writing every artefact to ``out_dir``; returns the results dict.

    A directory that already holds a run is never replaced by accident: pass ``resume`` to continue it or
    ``overwrite`` to start over.
    """
    run_dir = RunDirectory(out_dir)
    if run_dir.holds_run() and not (resume or overwrite):
        raise ConfigError("--out", f"{out_dir} already holds a privfed run; resume it (--resume), write elsewhere, "
                                   "or start it over (--overwrite)")
    started = time.perf_counter()
    fed = build_federation(cfg)
    strategy = make_strategy(cfg.federation)
    per_round = len(sample_clients(cfg, 1, len(fed.clients)))
    aggregator = make_aggregator(cfg.aggregation, max_clients=per_round, vector_length=fed.num_trainable + 1,
                                 client_ids=[c.id for c in fed.clients], distributed_noise=cfg.privacy.distributed_noise,
                                 update_clip=cfg.privacy.update_clip, progress=progress)
    try:
        return _run_rounds(cfg, run_dir, fed, strategy, aggregator, per_round, resume, progress, started)
    finally:
        aggregator.close()


def _run_rounds(cfg: ExperimentConfig, run_dir: RunDirectory, fed: Federation, strategy: ServerStrategy,
                aggregator: Aggregator, per_round: int, resume: bool, progress: bool, started: float) -> dict:
    """The round loop of :func:`run`: train the sampled clients, aggregate, evaluate, checkpoint."""
    weight_cap = max(c.num_examples for c in fed.clients)
    state = run_dir.load_checkpoint() if resume else None
    if state is None:
        run_dir.start(cfg)
        state = RunState(0, flatten(fed.server_params), {}, Ledger())
        state.initial = evaluate(fed.server_model, fed.test_data, fed.task, explicit_positions=fed.explicit_positions,
                                 owners=fed.test_owners)
    else:
        strategy.load_state_dict(state.strategy_state)
        for client in fed.clients:
            client.training.restore_history(history_of(state.ledger.dp_sgd(client.id)))
        log.warning("resuming %s after round %d of %d", run_dir.path, state.completed_rounds, cfg.training.rounds)
    log.info("%d clients, %d trainable tensors (%d values, %.2f MB a transfer)", len(fed.clients),
             len(fed.server_params), fed.num_trainable, fed.num_trainable * 4 / 1e6)

    plan = aggregator.plan()
    if plan and progress:
        tqdm.write(plan)
    elif plan:
        log.info(plan)
    budget = budget_of(cfg)
    bar = tqdm(total=cfg.training.rounds * per_round, initial=state.completed_rounds * per_round,
               disable=not progress, desc="client rounds", unit="client", dynamic_ncols=True)
    for r in range(state.completed_rounds + 1, cfg.training.rounds + 1):
        round_start = time.perf_counter()
        contributions: dict[int, np.ndarray] = {}
        losses, weights, skipped = [], [], []
        sampled = sample_clients(cfg, r, len(fed.clients))
        aggregator.prepare_round(r, sampled)
        for cid in sampled:
            client = fed.clients[cid]
            bar.set_postfix_str(f"round {r}, client {cid}")
            if client.noise_multiplier is not None and math.isfinite(budget):
                history = history_of(state.ledger.dp_sgd(cid))
                planned = (client.noise_multiplier, client.sample_rate, cfg.training.local_steps)
                eps_if = epsilon_of_history(history + [planned], cfg.privacy.delta, cfg.privacy.accountant)
                if eps_if > budget * (1 + 1e-9):
                    state.ledger.append(SkippedEvent(cid, r, eps_if, budget))
                    skipped.append(cid)
                    state.notes.append(f"round {r}: client {cid} did not train: epsilon would reach "
                                       f"{eps_if:.3f} > budget {budget:g}")
                    bar.update(1)
                    continue
            update, event = client.train_round(r, state.global_vector)
            if event is not None:
                state.ledger.append(event)
                if client.training.accountant_history() != history_of(state.ledger.dp_sgd(cid)):
                    raise PrivacyViolationError(f"client {cid}: Opacus' accountant and the ledger disagree")
            contributions[cid] = contribution(cfg, update.delta, update.num_examples, weight_cap)
            losses.append(update.train_loss)
            weights.append(update.num_examples)
            bar.update(1)

        row: dict = {"round": r, "clients_trained": len(contributions), "clients_skipped": len(skipped)}
        bytes_up = bytes_down_protocol = 0
        if contributions:
            dropouts = sample_dropouts(cfg, r, sorted(contributions))
            outcome = aggregator.aggregate(r, contributions, dropouts)
            bytes_up = outcome.bytes_up_per_client * len(contributions)
            bytes_down_protocol = outcome.bytes_down_per_client * len(contributions)
            row.update({"clients_aggregated": len(outcome.contributors), "dropouts": len(dropouts),
                        "bytes_up_per_client": outcome.bytes_up_per_client,
                        "bytes_down_per_client": outcome.bytes_down_per_client + fed.num_trainable * 4,
                        "aggregation_seconds": outcome.seconds, "aggregation": outcome.details})
            if outcome.total is None:
                reason = outcome.details.get("abort_reason") or "aborted"
                state.notes.append(f"round {r}: aggregation aborted ({reason}); the global model is unchanged")
                bar.write(f"round {r}: aggregation aborted: {reason}")
            else:
                mean_update = (outcome.total[:-1] / outcome.total[-1]).astype(np.float32)
                state.global_vector = strategy.apply(state.global_vector, mean_update).astype(np.float32)
                if outcome.noise is not None:
                    for cid in outcome.contributors:
                        state.ledger.append(outcome.noise.event(cid, r))
        else:
            state.notes.append(f"round {r}: no client trained; the global model is unchanged")
        load_into(fed.server_params, state.global_vector)
        row["train_loss"] = float(np.average(losses, weights=weights)) if losses else math.nan
        row.update(evaluate(fed.server_model, fed.test_data, fed.task, explicit_positions=fed.explicit_positions,
                            owners=fed.test_owners))
        row["epsilon"] = max(client_epsilons(fed, state.ledger).values(), default=0.0)
        if cfg.privacy.distributed_noise > 0:
            row["user_epsilon"] = max(client_user_epsilons(fed, state.ledger).values(), default=0.0)
        row["bytes_up"] = bytes_up
        row["bytes_down"] = (len(contributions) + len(skipped)) * fed.num_trainable * 4 + bytes_down_protocol
        row["seconds"] = time.perf_counter() - round_start
        state.rows.append(row)
        state.completed_rounds = r
        state.strategy_state = strategy.state_dict()
        run_dir.save_checkpoint(state)
        metric = "eval_accuracy" if "eval_accuracy" in row else "eval_perplexity"
        bar.write(f"round {r}: {metric}={row[metric]:.4f} eval_loss={row['eval_loss']:.4f} "
                  f"epsilon={row['epsilon']:.3f}"
                  + (f" user_epsilon={row['user_epsilon']:.3f}" if "user_epsilon" in row else "")
                  + _aggregation_note(row)
                  + (f" ({len(skipped)} skipped)" if skipped else ""))
    bar.close()
    results = build_results(fed, state, client_epsilons(fed, state.ledger), time.perf_counter() - started,
                            client_user_epsilons(fed, state.ledger))
    run_dir.finish(results)
    return results
