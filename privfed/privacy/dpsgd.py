"""DP-SGD for one client through Opacus: made private once, reused every round, and checked at every step.

The Opacus ``PrivacyEngine`` (and with it the accountant) is created once per client and lives for the whole run,
so each round's steps compose with the earlier ones. Two checks make DP fail loudly instead of silently:
every trainable tensor must receive a per-sample gradient (or, with ghost clipping, a per-sample gradient norm),
and with noise on, every one must move after a step.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfed.config import Accountant, Clipping
from privfed.errors import ConfigError, PrivacyViolationError


@dataclass(frozen=True)
class DpSettings:
    """What one client's DP-SGD runs with (``noise_multiplier`` already calibrated; None = DP off)."""

    noise_multiplier: float | None
    max_grad_norm: float
    accountant: Accountant
    clipping: Clipping = Clipping.PER_SAMPLE


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus' sampling rate for an expected batch size: 1 / len(DataLoader) = 1 / ceil(n / B)."""
    return 1.0 / math.ceil(num_examples / batch_size)


def _probe(params: list[nn.Parameter], entries: int = 64) -> list[torch.Tensor]:
    """A copy of ~``entries`` evenly spaced values of every tensor.

    Gaussian noise moves every value, so a tensor whose probed values are all unchanged after a noisy step got no
    noise; probing instead of copying whole tensors keeps the check cheap for full fine-tuning (22 M values).
    """
    return [p.detach().reshape(-1)[::max(1, p.numel() // entries)].clone() for p in params]


def _refuse_tied_parameters(model: nn.Module, params: list[nn.Parameter]) -> None:
    """Ghost clipping cannot handle a trainable tensor used by two layers (tied input/output embeddings).

    Opacus would only notice in the middle of the first forward pass; this says so before any client trains.
    """
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    tied = [owners[id(p)] for p in params if len(owners.get(id(p), [])) > 1]
    if tied:
        raise ConfigError("privacy.clipping", f"ghost clipping does not support tied trainable weights "
                                              f"({' = '.join(tied[0])}); use per_sample")


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
        if self.ghost:
            _refuse_tied_parameters(model, params)
        loader = DataLoader(dataset, batch_size=batch_size)
        with warnings.catch_warnings():  # seeded noise is documented (no torchcsprng); not worth a warning per client
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            self.engine = PrivacyEngine(accountant=dp.accountant.value)
            private = self.engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm, poisson_sampling=True, loss_reduction="mean",
                grad_sample_mode="ghost" if self.ghost else "hooks")
        # ghost mode also returns a loss wrapper for (logits, target) criteria; step() wraps per-example losses itself
        self.module, self.optimizer, self.loader = private[0], private[1], private[-1]
        if not math.isclose(self.loader.sample_rate, self.sample_rate):
            raise PrivacyViolationError(f"Opacus samples at q={self.loader.sample_rate}, privfed accounted for "
                                        f"q={self.sample_rate}")

    @property
    def ghost(self) -> bool:
        return self.dp.clipping is Clipping.GHOST

    @property
    def inner_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "original_optimizer", self.optimizer)

    def reset_optimizer_state(self) -> None:
        """Stateless clients (the FedAvg convention): Adam moments do not carry over between rounds."""
        self.inner_optimizer.state.clear()

    def step(self, per_example_loss: torch.Tensor) -> None:
        """Backward on the batch-mean loss, verify per-sample gradients (or norms), step, verify the tensors moved.

        ``per_example_loss`` has one entry per example: ghost clipping needs them separately for its second,
        reweighted backward pass.
        """
        with warnings.catch_warnings():  # Opacus' hooks on frozen-input layers: expected, not actionable
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self.engine is not None and self.ghost:
                self._ghost_backward(per_example_loss)
            else:
                per_example_loss.mean().backward()
        self._require_gradients()
        noisy = self.engine is not None and (self.dp.noise_multiplier or 0.0) > 0
        before = _probe(self.params) if noisy else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if before is not None:
            frozen = sum(bool(torch.equal(b, a)) for b, a in zip(before, _probe(self.params)))
            if frozen:
                raise PrivacyViolationError(
                    f"{frozen} of {len(self.params)} trainable tensors did not change after a noisy DP-SGD step: "
                    "noise was not applied to them (is the model on its device before get_peft_model?)")

    def _ghost_backward(self, per_example_loss: torch.Tensor) -> None:
        """Opacus' two-pass ghost clipping; a stale norm from the previous step must not stand in for this one."""
        for p in self.params:
            p._norm_sample = None
        try:
            DPTensorFastGradientClipping(self.module, self.optimizer, per_example_loss, "mean").backward()
        except (AttributeError, TypeError):  # Opacus stacks the norms mid-backward: a missing one fails there
            self._require_gradients()
            raise

    def _require_gradients(self) -> None:
        """Every trainable tensor got what its mode clips or steps with: per-sample gradients, norms, or gradients."""
        if self.engine is None:
            self._require([p.grad is not None for p in self.params], "gradient",
                          "the loss does not depend on them; refusing to report them as trained")
        elif self.ghost:
            self._require([getattr(p, "_norm_sample", None) is not None for p in self.params],
                          "per-sample gradient norm")
        else:
            self._require([getattr(p, "grad_sample", None) is not None for p in self.params], "per-sample gradient")

    def _require(self, present: list[bool], what: str,
                 hint: str = "Opacus did not hook the layer that owns them; refusing to take a non-private step",
                 ) -> None:
        missing = present.count(False)
        if missing:
            raise PrivacyViolationError(f"{missing} of {len(self.params)} trainable tensors got no {what} ({hint})")

    def restore_history(self, history: list[tuple[float, float, int]]) -> None:
        """Resume: give the accountant the steps this client took before the run was interrupted."""
        if self.engine is not None:
            self.engine.accountant.history = list(history)

    def accountant_history(self) -> list[tuple[float, float, int]]:
        return list(self.engine.accountant.history) if self.engine is not None else []
