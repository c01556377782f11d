"""Audit the auditor: the one-run audit repeated over seeds on one client's DP-SGD, cheaply.

A full ``privfed audit`` run costs a federation; checking that the audit never flags an intact mechanism (and
always flags a broken one) needs dozens of runs. Here the federation is built once and each seed trains only the
audited client, round after round, through the real runtime (Opacus' clipping, noise and accountant, the ledger's
cross-check) with fresh canaries and fresh noise; its own update is its next global state (FedAvg with one
client). What is observed is exactly the one-run audit's first observation: the client's upload in each round.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from privfed.audit.bounds import OneRunBound
from privfed.audit.canaries import CanaryDesign, CanaryInstrument, CanaryScore, best_bound
from privfed.audit.settings import MechanismFault
from privfed.client.recorded import train_recorded
from privfed.config import DpMode
from privfed.errors import ConfigError
from privfed.federation.setup import Federation
from privfed.federation.vectors import derive_seed
from privfed.privacy.accounting import epsilon_of_history, history_of
from privfed.privacy.ledger import Ledger


@dataclass(frozen=True)
class RepeatedAudit:
    seed: int
    claimed_epsilon: float  # the accountant's ε after the rounds (with a fault: what it wrongly claims)
    bound: OneRunBound
    score: CanaryScore

    @property
    def violation(self) -> bool:
        return self.bound.epsilon_steinke > self.claimed_epsilon


def repeated_one_run(fed: Federation, seeds: Sequence[int], *, client: int = 0, canaries: int = 1000,
                     canary_norm: float = 10.0, fault: MechanismFault = MechanismFault.NONE,
                     confidence: float = 0.95, progress: bool = False) -> list[RepeatedAudit]:
    """One-run audits of ``client``'s DP-SGD over the config's rounds, one per seed, on ``fed`` (built once with
    :func:`~privfed.federation.setup.build_federation`; its runtime's instruments and run seed are restored, its
    trainable tensors hold the last seed's model)."""
    cfg = fed.config
    if cfg.privacy.mode is DpMode.OFF:
        raise ConfigError("privacy.mode", "repeated audits check a DP-SGD claim: the config has privacy off")
    if not 0 <= client < len(fed.clients):
        raise ConfigError("--client", f"the federation has clients 0..{len(fed.clients) - 1}, got {client}")
    state = fed.clients[client]
    shard = fed.shard(state)
    runtime = fed.runtime
    run_seed = runtime.run_seed
    found = []
    for seed in tqdm(seeds, desc="audits", unit="seed", disable=not progress):
        rng = np.random.default_rng(derive_seed(cfg.seed, seed, 0x5EED))
        design = CanaryDesign.draw(canaries, fed.num_trainable, rng)
        instrument = CanaryInstrument(design, runtime.params, cfg.privacy.max_grad_norm, canary_norm, fault,
                                      derive_seed(cfg.seed, seed))
        runtime.instruments[state.id] = instrument
        runtime.run_seed = derive_seed(cfg.seed, seed, 0xF00D)  # fresh batches and noise for every seed
        ledger, vector, observed = Ledger(), fed.initial_vector.copy(), []
        try:
            for round_idx in range(1, cfg.training.rounds + 1):
                result = train_recorded(runtime, state, shard, round_idx, vector, ledger)
                observed.append(result.update.delta[design.coordinates].astype(np.float64))
                vector = vector + result.update.delta
        finally:
            runtime.instruments.pop(state.id, None)
            runtime.run_seed = run_seed
        claimed = epsilon_of_history(history_of(ledger.dp_sgd(state.id)), cfg.privacy.delta, cfg.privacy.accountant)
        bound, kind = best_bound(np.stack(observed), design.included, cfg.privacy.delta, confidence)
        found.append(RepeatedAudit(seed, claimed, bound, kind))
    return found
