"""DP-SGD through Opacus for a model that trains many clients in turn.

The model is wrapped for per-sample gradients once (:func:`wrap_for_dp`), by whichever runtime holds it. Each
client's round then gets its own Opacus ``DPOptimizer`` over a fresh inner optimizer, its own Poisson
``DPDataLoader`` over its shard (split into physical chunks the way Opacus' ``BatchMemoryManager`` does, when
asked) and an
Opacus accountant rebuilt from that client's ledger history (:class:`DpSgdRound`). Nothing of a client survives the
round in torch: its privacy state is its ledger.

Three checks make DP fail loudly instead of silently: every trainable tensor must receive a per-sample gradient (or,
with ghost clipping, a per-sample gradient norm); with noise on, every one must move after a step; and the
accountant the optimizer stepped must agree with the ledger. An empty Poisson batch is still a noisy step of a zero
clipped gradient, which is what the accounting assumes.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, get_optimizer_class
from opacus.utils.batch_memory_manager import wrap_data_loader
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfed.config import Accountant, Clipping
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.privacy.accounting import new_accountant

History = list[tuple[float, float, int]]


@dataclass(frozen=True)
class DpSettings:
    """What every client's DP-SGD shares in a run (each client's noise multiplier is calibrated to its own q)."""

    max_grad_norm: float
    accountant: Accountant
    clipping: Clipping = Clipping.PER_SAMPLE

    @property
    def ghost(self) -> bool:
        return self.clipping is Clipping.GHOST


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """Opacus' sampling rate for an expected batch size: 1 / len(DataLoader) = 1 / ceil(n / B)."""
    return 1.0 / math.ceil(num_examples / batch_size)


def expected_batch_size(num_examples: int, batch_size: int) -> int:
    """The divisor of Opacus' "mean" loss reduction: n * q rounded down, as ``PrivacyEngine.make_private`` means it.

    Computed in integers: Opacus' ``int(n * q)`` in floating point gives 0 for (n, B) = (49, 1) (49 * (1/49) is
    0.999...), which would divide the step by zero, and 1 instead of 2 for (98, 2), which would double it.
    """
    return num_examples // math.ceil(num_examples / batch_size)


def refuse_tied_parameters(model: nn.Module, params: list[nn.Parameter], model_name: str = "the model") -> None:
    """Ghost clipping cannot handle a trainable tensor used by two layers (tied input/output embeddings).

    Opacus would only notice in the middle of the first forward pass; this says so before any client trains.
    """
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    tied = [owners[id(p)] for p in params if len(owners.get(id(p), [])) > 1]
    if tied:
        raise ConfigError("privacy.clipping", f"ghost clipping does not support tied trainable weights, and "
                                              f"{model_name} ties {' = '.join(tied[0])}; use per_sample")


def wrap_for_dp(model: nn.Module, params: list[nn.Parameter], dp: DpSettings) -> nn.Module:
    """The model wrapped once for per-sample gradients (hooks) or norms (ghost clipping); reused by every client."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("model.source", f"Opacus cannot compute per-sample gradients for this model: {errors[0]}")
    if dp.ghost:
        refuse_tied_parameters(model, params)
        wrapped: nn.Module = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                                  max_grad_norm=dp.max_grad_norm)
    else:
        wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    wrapped.forbid_grad_accumulation()  # Poisson batches: each step's per-sample gradients must be its own
    return wrapped


def _probe(params: list[nn.Parameter], entries: int = 64) -> list[torch.Tensor]:
    """A copy of ~``entries`` evenly spaced values of every tensor.

    Gaussian noise moves every value, so a tensor whose probed values are all unchanged after a noisy step got no
    noise; probing instead of copying whole tensors keeps the check cheap for full fine-tuning (22 M values).
    """
    return [p.detach().reshape(-1)[::max(1, p.numel() // entries)].clone() for p in params]


def _require(present: list[bool], what: str, hint: str) -> None:
    missing = present.count(False)
    if missing:
        raise PrivacyViolationError(f"{missing} of {len(present)} trainable tensors got no {what} ({hint})")


def _endless(loader: DataLoader) -> Iterator:
    """Batches without end: a new pass (a new iterator, as a training loop would make) whenever one runs out."""
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


NOT_HOOKED = "Opacus did not hook the layer that owns them; refusing to take a non-private step"

# One physical batch in, its per-example losses out (shape [rows]); None for an empty batch.
LossFunction = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


class StepInstrument(Protocol):
    """What an audit attaches to one client's local training (:mod:`privfed.audit.canaries`): it may add
    synthetic examples' gradients to each step and, to test the auditor, inject a mechanism fault. Production
    runs attach none."""

    def start_round(self, round_idx: int, client: int) -> None:
        """Called as the client's local training of ``round_idx`` begins, wherever it trains (this process, or the
        node that carries the audited client)."""

    def attach(self, local: DpSgdRound | PlainRound) -> None:
        """Called once the round's optimizer and loader exist, before the first step."""

    def before_step(self, local: DpSgdRound | PlainRound) -> None:
        """Called once per logical step before the optimizer consumes the gradients: under DP-SGD after the first
        physical chunk's backward pass (its per-sample gradients, ``p.grad_sample``), without DP after every chunk's
        (the batch gradient, ``p.grad``)."""


class DpSgdRound:
    """One client's DP-SGD for one round on the shared wrapped model: each ``step(loss_of)`` is one Poisson step.

    ``history`` is the client's earlier (noise multiplier, sample rate, steps) from its ledger; the Opacus
    accountant stepped here starts from it, and :attr:`accountant_history` is what it ends with.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
                 shard: TensorDataset, batch_size: int, physical_batch_size: int, noise_multiplier: float,
                 dp: DpSettings, history: History, instrument: StepInstrument | None = None):
        self.module, self.params, self.dp = module, params, dp
        self.noise_multiplier = noise_multiplier
        self.physical_batch_size = physical_batch_size
        self.sample_rate = poisson_sample_rate(len(shard), batch_size)
        optimizer_class = get_optimizer_class(clipping="flat", distributed=False,
                                              grad_sample_mode="ghost" if dp.ghost else "hooks")
        self.optimizer: DPOptimizer = optimizer_class(
            optimizer=optimizer, noise_multiplier=noise_multiplier, max_grad_norm=dp.max_grad_norm,
            expected_batch_size=expected_batch_size(len(shard), batch_size), loss_reduction="mean")
        self.accountant = new_accountant(dp.accountant)
        self.accountant.history = list(history)
        self.steps_taken = 0
        hook = self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate)

        def count_and_account(optim: DPOptimizer) -> None:
            hook(optim)
            self.steps_taken += 1

        self.optimizer.attach_step_hook(count_and_account)
        self.loader = DPDataLoader.from_data_loader(DataLoader(shard, batch_size=batch_size))
        if not math.isclose(self.loader.sample_rate, self.sample_rate):
            raise PrivacyViolationError(f"Opacus samples at q={self.loader.sample_rate}, privfed accounted for "
                                        f"q={self.sample_rate}")
        self.use_loader(self.loader)
        self.instrument = instrument
        self._instrument_pending = False
        if instrument is not None:
            instrument.attach(self)

    def use_loader(self, loader: DPDataLoader) -> None:
        """Draw the following batches from ``loader``. With a physical batch size, Opacus' BatchMemoryManager
        mechanism: the same Poisson batches cut into physical chunks, the optimizer told to skip (accumulate) until
        a logical batch's last chunk."""
        self.loader = loader
        self._batches: Iterator = _endless(loader if not self.physical_batch_size else wrap_data_loader(
            data_loader=loader, max_batch_size=self.physical_batch_size, optimizer=self.optimizer))

    @property
    def accountant_history(self) -> History:
        return list(self.accountant.history)

    def step(self, loss_of: LossFunction) -> list[float]:
        """One logical (Poisson) step; returns its mean example loss ([] for an empty batch)."""
        losses: list[tuple[float, int]] = []  # (loss sum, rows) of each non-empty physical chunk
        before = _probe(self.params) if self.noise_multiplier > 0 else None
        taken = self.steps_taken
        self._instrument_pending = self.instrument is not None
        while self.steps_taken == taken:  # physical chunks until the optimizer takes the logical step
            self._physical_step(next(self._batches), loss_of, losses)
        if before is not None:
            frozen = sum(bool(torch.equal(b, a)) for b, a in zip(before, _probe(self.params)))
            if frozen:
                raise PrivacyViolationError(
                    f"{frozen} of {len(self.params)} trainable tensors did not change after a noisy DP-SGD step: "
                    "noise was not applied to them (is the model on its device before get_peft_model?)")
        rows = sum(n for _, n in losses)
        return [sum(total for total, _ in losses) / rows] if rows else []

    def _physical_step(self, tensors: list[torch.Tensor], loss_of: LossFunction,
                       losses: list[tuple[float, int]]) -> None:
        rows = tensors[0].shape[0]
        with warnings.catch_warnings():  # Opacus' hooks on frozen-input layers: expected, not actionable
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if rows == 0:
                self._empty_gradients()
            else:
                per_example = loss_of(tuple(tensors))
                losses.append((float(per_example.detach().sum()), rows))
                self._backward(per_example)
        self._require_gradients()
        if self._instrument_pending:
            self._instrument_pending = False
            self.instrument.before_step(self)  # type: ignore[union-attr]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, per_example: torch.Tensor) -> None:
        if not self.dp.ghost:
            per_example.mean().backward()
            return
        for p in self.params:  # a stale norm from the previous step must not stand in for this one
            p._norm_sample = None
        try:
            DPTensorFastGradientClipping(self.module, self.optimizer, per_example, "mean").backward()
        except (AttributeError, TypeError):  # Opacus stacks the norms mid-backward: a missing one fails there
            self._require_gradients()
            raise

    def _empty_gradients(self) -> None:
        """An empty Poisson batch: zero clipped gradient, so the step that follows adds noise alone."""
        for p in self.params:
            if self.dp.ghost:
                p._norm_sample = torch.zeros(0, device=p.device, dtype=p.dtype)
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)

    def _require_gradients(self) -> None:
        """Every trainable tensor got what its mode clips with: per-sample gradients or per-sample norms."""
        if self.dp.ghost:
            _require([getattr(p, "_norm_sample", None) is not None for p in self.params], "per-sample gradient norm",
                     NOT_HOOKED)
        else:
            _require([getattr(p, "grad_sample", None) is not None for p in self.params], "per-sample gradient",
                     NOT_HOOKED)


class PlainRound:
    """A client's round without DP: shuffled mini-batches of ``batch_size``, optionally in physical chunks."""

    def __init__(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, shard: TensorDataset,
                 batch_size: int, physical_batch_size: int, instrument: StepInstrument | None = None):
        self.params, self.optimizer = params, optimizer
        self.batch_size = batch_size
        self.sample_rate = min(1.0, batch_size / len(shard))  # the share of the shard in each step
        self._batches: Iterator = _endless(DataLoader(shard, batch_size=batch_size, shuffle=True))
        self.chunk = physical_batch_size or batch_size
        self.instrument = instrument
        if instrument is not None:
            instrument.attach(self)

    def step(self, loss_of: LossFunction) -> list[float]:
        """One step on the next shuffled batch; returns its mean loss."""
        tensors = next(self._batches)
        rows = tensors[0].shape[0]
        total = 0.0
        for start in range(0, rows, self.chunk):
            per_example = loss_of(tuple(t[start:start + self.chunk] for t in tensors))
            (per_example.sum() / rows).backward()  # the chunks' gradients add up to the batch mean's
            total += float(per_example.detach().sum())
        _require([p.grad is not None for p in self.params], "gradient",
                 "the loss does not depend on them; refusing to report them as trained")
        if self.instrument is not None:
            self.instrument.before_step(self)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return [total / rows]
