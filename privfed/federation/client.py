"""A federated client: its private shard, its own model copy and its persistent DP-SGD engine."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from privfed.config import ClientOptimizer, TrainingConfig
from privfed.data.tokenize import as_batch
from privfed.federation.vectors import derive_seed, flatten, load_into
from privfed.models.losses import per_example_loss
from privfed.models.sources import Task
from privfed.privacy.dpsgd import DpSettings, PrivateTraining
from privfed.privacy.ledger import DpSgdEvent


@dataclass(frozen=True)
class ClientUpdate:
    """What a client produces in a round, before aggregation protects it."""

    client: int
    delta: np.ndarray  # trained - global, over the trainable tensors
    num_examples: int
    train_loss: float
    steps: int
    seconds: float


def build_optimizer(kind: ClientOptimizer, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if kind is ClientOptimizer.ADAM:
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class Client:
    def __init__(self, client_id: int, model: nn.Module, params: list[nn.Parameter], data: TensorDataset,
                 task: Task, training: TrainingConfig, dp: DpSettings, seed: int, explicit_positions: bool = False):
        self.id = client_id
        self.explicit_positions = explicit_positions
        self.task = task
        self.cfg = training
        self.seed = seed
        self.num_examples = len(data)
        optimizer = build_optimizer(training.optimizer, params, training.lr)
        self.training = PrivateTraining(model, params, data, training.batch_size, optimizer, dp)
        self.params = params

    @property
    def sample_rate(self) -> float:
        return self.training.sample_rate

    @property
    def noise_multiplier(self) -> float | None:
        return self.training.dp.noise_multiplier

    def train_round(self, round_idx: int, global_vector: np.ndarray) -> tuple[ClientUpdate, DpSgdEvent | None]:
        """Local DP-SGD from the global state; returns the update and the ledger event describing its steps."""
        start = time.perf_counter()
        torch.manual_seed(derive_seed(self.seed, round_idx, self.id))  # Poisson sampling and noise: reproducible
        load_into(self.params, global_vector)
        anchor = torch.from_numpy(global_vector.copy()) if self.cfg.prox_mu > 0 else None
        self.training.reset_optimizer_state()
        self.training.module.train()
        losses: list[float] = []
        batches = iter(self.training.loader)
        for _ in range(self.cfg.local_steps):
            try:
                tensors = next(batches)
            except StopIteration:
                batches = iter(self.training.loader)
                tensors = next(batches)
            batch = as_batch(tuple(tensors), self.explicit_positions)
            per_example = per_example_loss(self.training.module, batch, self.task)
            if per_example.numel() > 0:
                losses.append(float(per_example.detach().mean()))
            self.training.step(per_example)
            if anchor is not None:
                self._proximal_step(anchor)
        update = ClientUpdate(
            client=self.id, delta=flatten(self.params) - global_vector, num_examples=self.num_examples,
            train_loss=float(np.mean(losses)) if losses else math.nan, steps=self.cfg.local_steps,
            seconds=time.perf_counter() - start)
        event = None
        if self.noise_multiplier is not None:
            event = DpSgdEvent(client=self.id, round=round_idx, noise_multiplier=self.noise_multiplier,
                               sample_rate=self.sample_rate, steps=self.cfg.local_steps,
                               max_grad_norm=self.training.dp.max_grad_norm)
        return update, event

    def _proximal_step(self, anchor: torch.Tensor) -> None:
        """FedProx as a decoupled proximal step w <- w - lr*mu*(w - w_global).

        Adding mu/2*||w - w_global||^2 to the loss would not work under Opacus: the term touches parameters, not
        activations, so it gets no per-sample gradient and Opacus overwrites it. It is data-independent, so
        applying it after the private step is post-processing and costs no privacy.
        """
        offset = 0
        shrink = self.cfg.lr * self.cfg.prox_mu
        with torch.no_grad():
            for p in self.params:
                ref = anchor[offset:offset + p.numel()].view_as(p)
                p.sub_(shrink * (p - ref))
                offset += p.numel()
