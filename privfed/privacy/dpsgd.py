"""DP-SGD for one client through Opacus: made private once, reused every round, and checked at every step.

The Opacus ``PrivacyEngine`` (and with it the accountant) is created once per client and lives for the whole run,
so each round's steps compose with the earlier ones. Two checks make DP fail loudly instead of silently:
every trainable tensor must receive a per-sample gradient, and with noise on, every one must move after a step.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfed.config import Accountant
from privfed.errors import PrivacyViolationError


@dataclass(frozen=True)
class DpSettings:
    """What one client's DP-SGD runs with (``noise_multiplier`` already calibrated; None = DP off)."""

    noise_multiplier: float | None
    max_grad_norm: float
    accountant: Accountant


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus' sampling rate for an expected batch size: 1 / len(DataLoader) = 1 / ceil(n / B)."""
    return 1.0 / math.ceil(num_examples / batch_size)


class PrivateTraining:
    """The module to call, the optimizer to step and the loader to draw batches from, for one client."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], dataset: TensorDataset, batch_size: int,
                 optimizer: torch.optim.Optimizer, dp: DpSettings):
        self.params = params
        self.dp = dp
        self.sample_rate = poisson_sample_rate(len(dataset), batch_size)
        if dp.noise_multiplier is None:
            self.module: nn.Module = model
            self.optimizer = optimizer
            self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
            self.engine = None
            return
        self.engine = PrivacyEngine(accountant=dp.accountant.value)
        loader = DataLoader(dataset, batch_size=batch_size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            self.module, self.optimizer, self.loader = self.engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm, poisson_sampling=True, loss_reduction="mean")
        if not math.isclose(self.loader.sample_rate, self.sample_rate):
            raise PrivacyViolationError(f"Opacus samples at q={self.loader.sample_rate}, privfed accounted for "
                                        f"q={self.sample_rate}")

    @property
    def inner_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "original_optimizer", self.optimizer)

    def reset_optimizer_state(self) -> None:
        """Stateless clients (the FedAvg convention): Adam moments do not carry over between rounds."""
        self.inner_optimizer.state.clear()

    def step(self, loss: torch.Tensor) -> None:
        """Backward, verify per-sample gradients, step, verify the tensors moved."""
        with warnings.catch_warnings():  # Opacus' hooks on frozen-input layers: expected, not actionable
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        if self.engine is not None:
            missing = [i for i, p in enumerate(self.params) if getattr(p, "grad_sample", None) is None]
            if missing:
                raise PrivacyViolationError(
                    f"{len(missing)} of {len(self.params)} trainable tensors got no per-sample gradient "
                    "(Opacus did not hook the layer that owns them); refusing to take a non-private step")
        else:
            missing = [i for i, p in enumerate(self.params) if p.grad is None]
            if missing:
                raise PrivacyViolationError(f"{len(missing)} trainable tensors got no gradient")
        noisy = self.engine is not None and (self.dp.noise_multiplier or 0.0) > 0
        before = [p.detach().clone() for p in self.params] if noisy else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if before is not None:
            frozen = sum(bool(torch.equal(b, p.detach())) for b, p in zip(before, self.params))
            if frozen:
                raise PrivacyViolationError(
                    f"{frozen} of {len(self.params)} trainable tensors did not change after a noisy DP-SGD step: "
                    "noise was not applied to them (is the model on its device before get_peft_model?)")

    def restore_history(self, history: list[tuple[float, float, int]]) -> None:
        """Resume: give the accountant the steps this client took before the run was interrupted."""
        if self.engine is not None:
            self.engine.accountant.history = list(history)

    def accountant_history(self) -> list[tuple[float, float, int]]:
        return list(self.engine.accountant.history) if self.engine is not None else []
