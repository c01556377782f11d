"""Everything a run needs before round 1: data split into clients, the model in its regime, DP calibration."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
from torch import nn
from torch.utils.data import TensorDataset

from privfed.config import DpMode, ExperimentConfig, Partition, Regime
from privfed.data.partition import describe, natural_owners, partition
from privfed.data.sources import load_dataset
from privfed.data.tokenize import tokenize
from privfed.federation.client import Client
from privfed.federation.vectors import derive_seed
from privfed.models.regimes import apply_regime, trainable_parameters
from privfed.models.sources import Task, load_model
from privfed.privacy.accounting import calibrate_noise
from privfed.privacy.dpsgd import DpSettings, poisson_sample_rate

log = logging.getLogger(__name__)


@dataclass
class Federation:
    config: ExperimentConfig
    task: Task
    clients: list[Client]
    server_model: nn.Module  # evaluation copy: never wrapped by Opacus
    server_params: list[nn.Parameter]
    test_data: TensorDataset
    partition_summary: list[dict]
    trainable_names: list[str]
    explicit_positions: bool
    test_owners: np.ndarray | None = None  # natural partitions: the client owning each held-out example's group

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.server_params)


def split_train_test(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def planned_steps(cfg: ExperimentConfig) -> int:
    """Steps a client takes if sampled in every round: the conservative horizon noise is calibrated for."""
    return cfg.training.rounds * cfg.training.local_steps


def dp_settings_for(cfg: ExperimentConfig, sample_rate: float) -> DpSettings:
    pr = cfg.privacy
    if pr.mode is DpMode.OFF:
        sigma = None
    elif pr.mode is DpMode.FIXED_NOISE:
        sigma = pr.noise_multiplier
    else:
        sigma = calibrate_noise(pr.epsilon, pr.delta, sample_rate, planned_steps(cfg), pr.accountant)
    return DpSettings(noise_multiplier=sigma, max_grad_norm=pr.max_grad_norm, accountant=pr.accountant,
                      clipping=pr.clipping)


def build_federation(cfg: ExperimentConfig) -> Federation:
    rng = np.random.default_rng(derive_seed(cfg.seed, 0xDA7A))
    data = load_dataset(cfg.data.dataset, cfg.data.languages)
    if cfg.data.max_examples and len(data) > cfg.data.max_examples:
        data = data.subset(np.sort(rng.choice(len(data), cfg.data.max_examples, replace=False)))
    train_idx, test_idx = split_train_test(len(data), cfg.data.test_fraction, rng)
    pool, test = data.subset(train_idx), data.subset(test_idx)
    if cfg.data.eval_examples and len(test) > cfg.data.eval_examples:
        test = test.subset(np.sort(rng.choice(len(test), cfg.data.eval_examples, replace=False)))
    shards = partition(pool, cfg.partition, rng)

    loaded = load_model(cfg.model.source, num_labels=max(1, len(data.label_names)),
                        random_init=cfg.model.regime is Regime.PRETRAIN, seed=derive_seed(cfg.seed, 0x30DE1))
    base = apply_regime(loaded.model, cfg.model, loaded.task)
    names = [n for n, _ in trainable_parameters(base)]
    test_data = tokenize(test, loaded.tokenizer, cfg.data.max_length)

    explicit_positions = loaded.task is Task.CLASSIFICATION and cfg.model.regime in (Regime.FULL, Regime.PRETRAIN)
    clients = []
    for cid, idx in enumerate(shards):
        shard = tokenize(pool.subset(idx), loaded.tokenizer, cfg.data.max_length)
        model = copy.deepcopy(base)
        params = [p for _, p in trainable_parameters(model)]
        sample_rate = poisson_sample_rate(len(shard), cfg.training.batch_size)
        dp = dp_settings_for(cfg, sample_rate)
        clients.append(Client(cid, model, params, shard, loaded.task, cfg.training, dp, cfg.seed,
                              explicit_positions))
    server_params = [p for _, p in trainable_parameters(base)]
    owners = natural_owners(pool, shards, test.groups) if cfg.partition.scheme is Partition.NATURAL else None
    return Federation(cfg, loaded.task, clients, base, server_params, test_data, describe(pool, shards), names,
                      explicit_positions, owners)
