"""The client runtime: one model per worker (process and device), trained for each client in turn.

pfl-research's shape: users are data, the model is shared. The runtime wraps its model for per-sample gradients
once; for each client it loads the global trainable state, builds that client's DP optimizer, Poisson loader and
accountant (:class:`~privfed.privacy.dpsgd.DpSgdRound`) over the client's shard, trains, and returns the update and
the DP event describing its steps. Memory is one model, whatever the number of clients.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from privfed.client.state import ClientState, ClientUpdate
from privfed.config import ClientOptimizer, Task, TrainingConfig
from privfed.data.tokenize import ExplicitInputs, as_batch
from privfed.federation.vectors import derive_seed, flatten, load_into
from privfed.models.losses import per_example_loss
from privfed.models.regimes import trainable_parameters
from privfed.privacy.dp_adam import DpAdamBC
from privfed.privacy.dpsgd import (
    DpSettings,
    DpSgdRound,
    History,
    PlainRound,
    StepInstrument,
    expected_batch_size,
    wrap_for_dp,
)
from privfed.privacy.ledger import DpSgdEvent


def build_optimizer(training: TrainingConfig, params: list[nn.Parameter], noise_std: float) -> torch.optim.Optimizer:
    """A fresh client optimizer: clients are stateless across rounds (the FedAvg convention). ``noise_std`` is the
    DP noise's standard deviation per coordinate of the gradient the optimizer receives, σC/B (0 without DP):
    DP-AdamBC takes its variance out of Adam's second moment."""
    if training.optimizer is ClientOptimizer.ADAM:
        return torch.optim.Adam(params, lr=training.lr)
    if training.optimizer is ClientOptimizer.ADAM_BC:
        return DpAdamBC(params, lr=training.lr, noise_variance=noise_std ** 2, floor=training.adam_bc_floor)
    return torch.optim.SGD(params, lr=training.lr)


@dataclass(frozen=True)
class TrainedRound:
    """A client's round: its update, the DP event of its steps (None without DP) and the Opacus accountant's
    history after them, for the ledger cross-check."""

    update: ClientUpdate
    event: DpSgdEvent | None
    accountant_history: History


class ClientRuntime:
    """Holds the model (on its device, in its regime) and trains any client on it.

    ``dp`` None: no DP-SGD (the model is not wrapped). ``explicit``: the per-example inputs the model needs
    (:func:`privfed.models.inputs.explicit_inputs`).
    """

    def __init__(self, model: nn.Module, task: Task, training: TrainingConfig, dp: DpSettings | None, run_seed: int,
                 explicit: ExplicitInputs):
        self.model, self.task, self.training, self.dp = model, task, training, dp
        self.run_seed, self.explicit = run_seed, explicit
        self.params = [p for _, p in trainable_parameters(model)]
        self.device = self.params[0].device
        self.module = wrap_for_dp(model, self.params, dp) if dp is not None else model
        # client id -> what an audit attaches to that client's local training (canaries); empty in normal runs
        self.instruments: dict[int, StepInstrument] = {}

    def load(self, global_vector: np.ndarray) -> None:
        """Set the trainable tensors to the global state (also what evaluation of the global model needs)."""
        load_into(self.params, global_vector)

    def train(self, client: ClientState, shard: TensorDataset, round_idx: int, global_vector: np.ndarray,
              history: History, local_steps: int | None = None) -> TrainedRound:
        """Local training of ``client`` from the global state; ``history`` is its DP-SGD history from its ledger.
        ``local_steps`` overrides ``training.local_steps`` (a simulated attacker that trains longer)."""
        start = time.perf_counter()
        cfg = self.training
        steps = cfg.local_steps if local_steps is None else local_steps
        torch.manual_seed(derive_seed(self.run_seed, round_idx, client.id))  # Poisson sampling and noise
        self.load(global_vector)
        anchor = torch.from_numpy(global_vector.copy()).to(self.device) if cfg.prox_mu > 0 else None
        noise_std = 0.0 if client.noise_multiplier is None else (
            client.noise_multiplier * self.dp.max_grad_norm / expected_batch_size(len(shard), cfg.batch_size))
        optimizer = build_optimizer(cfg, self.params, noise_std)
        instrument = self.instruments.get(client.id)
        if instrument is not None:
            instrument.start_round(round_idx, client.id)
        if not self.model.training:  # evaluation restores train mode; Opacus records nothing in eval mode
            self.module.train()
        if client.noise_multiplier is None:
            local: DpSgdRound | PlainRound = PlainRound(self.params, optimizer, shard, cfg.batch_size,
                                                        cfg.physical_batch_size, instrument)
        else:
            local = DpSgdRound(self.module, self.params, optimizer, shard, cfg.batch_size, cfg.physical_batch_size,
                               client.noise_multiplier, self.dp, history, instrument)

        def loss_of(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
            batch = as_batch(tuple(t.to(self.device) for t in tensors), self.explicit)
            return per_example_loss(self.module, batch, self.task)

        losses = []
        for _ in range(steps):
            losses += local.step(loss_of)
            if anchor is not None:
                self._proximal_step(anchor)
        update = ClientUpdate(client=client.id, delta=flatten(self.params) - global_vector,
                              num_examples=client.num_examples,
                              train_loss=float(np.mean(losses)) if losses else math.nan, steps=steps,
                              seconds=time.perf_counter() - start)
        if client.noise_multiplier is None:
            return TrainedRound(update, None, [])
        event = DpSgdEvent(client=client.id, round=round_idx, noise_multiplier=client.noise_multiplier,
                           sample_rate=client.sample_rate, steps=steps, max_grad_norm=self.dp.max_grad_norm)
        return TrainedRound(update, event, local.accountant_history)

    def _proximal_step(self, anchor: torch.Tensor) -> None:
        """FedProx as a decoupled proximal step w <- w - lr*mu*(w - w_global) after each private step.

        Adding mu/2*||w - w_global||^2 to the loss would not work under Opacus: the term touches parameters, not
        activations, so it gets no per-sample gradient and Opacus overwrites it. It is data-independent, so
        applying it after the private step is post-processing and costs no privacy.
        """
        shrink = self.training.lr * self.training.prox_mu
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.sub_(shrink * (p - anchor[offset:offset + p.numel()].view_as(p)))
                offset += p.numel()
