"""Dirac canaries for the one-run audit, and the mechanism faults that test the auditor.

Steinke, Nasr & Jagielski's white-box one-run audit: m canaries, each included in one client's training
independently with probability ½. A canary is a synthetic example whose per-sample gradient is ``norm_factor × C``
on one coordinate of the trainable vector (its own coordinate: a Dirac canary) and zero elsewhere. In every DP-SGD
step each included canary joins the Poisson batch with the step's sampling rate, like a real example, and its
per-sample gradient is appended to the real ones before Opacus clips, sums and noises them all: the canaries pass
through exactly the mechanism whose ε is claimed. Canaries larger than C are clipped to C when clipping works; when
it does not, they stand out — which is how a missing clip is caught.

:class:`MechanismFault` breaks the mechanism in one way while the accountant and the ledger keep claiming the
configured ε: the audit must then report a violation. Faults exist to test the auditor; a normal run has none.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
from opacus.data_loader import DPDataLoader

from privfed.audit.bounds import OneRunBound, one_run_bound
from privfed.audit.settings import MechanismFault
from privfed.errors import ConfigError
from privfed.federation.vectors import derive_seed
from privfed.privacy.dpsgd import DpSgdRound, PlainRound

MAX_CANARY_VALUES = 1 << 28  # appended per-sample rows x trainable values in one step (1 GiB of float32)


@dataclass(frozen=True)
class CanaryDesign:
    """Where the m canaries live (distinct coordinates of the trainable vector) and which were included."""

    coordinates: np.ndarray  # int64, shape [m]
    included: np.ndarray  # bool, shape [m]: each independently with probability 1/2

    @property
    def count(self) -> int:
        return int(self.coordinates.size)

    @classmethod
    def draw(cls, count: int, vector_length: int, rng: np.random.Generator,
             avoid: tuple[slice, ...] = ()) -> CanaryDesign:
        """``count`` distinct coordinates, none in ``avoid`` (values other audits read, such as the input
        embedding: a canary there would look like a token the client used)."""
        allowed = np.ones(vector_length, dtype=bool)
        for part in avoid:
            allowed[part] = False
        free = np.flatnonzero(allowed)
        if count < 1:
            raise ConfigError("--canaries", f"needs at least 1 canary, got {count}")
        if count > free.size:
            raise ConfigError("--canaries", f"{count} Dirac canaries need {count} distinct trainable values; the "
                                            f"model trains {free.size} the other audits leave free: use fewer")
        coordinates = np.sort(rng.choice(free, size=count, replace=False)).astype(np.int64)
        return cls(coordinates, rng.random(count) < 0.5)



class CanaryScore(enum.Enum):
    """How a canary's per-round observations become one score (both fixed before training).

    Each round's values at the m coordinates are standardised by their median absolute deviation (most canaries
    are not in a given round's batches, so that is the noise's scale, in whatever units the optimizer produced),
    negated (a canary's gradient is positive on its coordinate, so training moves it down), then summed over
    rounds (best when a canary is in most rounds' batches) or maximised (best when it rarely is: small q)."""

    SUM = "sum"
    MAX = "max"


def standardised(rounds: np.ndarray) -> np.ndarray:
    """[rounds, m] observed values -> how far each points along its canary, in units of that round's spread."""
    z = -np.asarray(rounds, dtype=np.float64)
    centred = z - np.median(z, axis=1, keepdims=True)
    spread = 1.4826 * np.median(np.abs(centred), axis=1, keepdims=True)
    fallback = np.max(np.abs(centred), axis=1, keepdims=True)  # noiseless rounds: most values are exactly equal
    scale = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
    return centred / scale


def canary_scores(rounds: np.ndarray, kind: CanaryScore) -> np.ndarray:
    z = standardised(rounds)
    return z.sum(axis=0) if kind is CanaryScore.SUM else z.max(axis=0)


def best_bound(rounds: np.ndarray, included: np.ndarray, delta: float,
               confidence: float) -> tuple[OneRunBound, CanaryScore]:
    """The one-run bound of each :class:`CanaryScore` at Bonferroni-split confidence; the larger (Steinke)."""
    split = 1 - (1 - confidence) / len(CanaryScore)
    found = [(one_run_bound(canary_scores(rounds, kind), included, delta, split), kind) for kind in CanaryScore]
    return max(found, key=lambda pair: pair[0].epsilon_steinke)


class CanaryInstrument:
    """Attached to the audited client's local training (``ClientRuntime.instruments``): adds the included canaries'
    gradients to every step, Poisson-sampled at the step's rate, and applies ``fault``.

    The canaries' sampling uses their own torch generator seeded from (seed, client, round, step), so the real
    examples' batches and noise are drawn exactly as they would be without them.
    """

    def __init__(self, design: CanaryDesign, params: list[torch.nn.Parameter], max_grad_norm: float,
                 norm_factor: float, fault: MechanismFault, seed: int):
        self.design, self.fault, self.seed = design, fault, seed
        self.magnitude = norm_factor * max_grad_norm
        self.params = params
        sizes = [p.numel() for p in params]
        self._total = sum(sizes)
        starts = np.cumsum([0, *sizes[:-1]])
        included = design.coordinates[design.included]
        owner = np.searchsorted(starts, included, side="right") - 1
        self._included = [(int(o), int(c - starts[o])) for o, c in zip(owner, included)]  # (tensor, local index)
        self._round_seed = 0
        self._steps = 0
        self.sample_rate = math.nan  # the rate canaries are sampled at in the current round

    def start_round(self, round_idx: int, client: int) -> None:
        self._round_seed = derive_seed(self.seed, round_idx, client, 0xCA7A)
        self._steps = 0

    def attach(self, local: DpSgdRound | PlainRound) -> None:
        if isinstance(local, DpSgdRound):
            if local.dp.ghost:
                raise ConfigError("privacy.clipping", "the canary audit appends per-sample gradients, which ghost "
                                                      "clipping never materialises: audit with per_sample clipping")
            self._apply_fault(local)
        elif self.fault is not MechanismFault.NONE:
            raise ConfigError("--fault", "a mechanism fault needs DP-SGD to break: the run has privacy.mode off")
        self.sample_rate = local.loader.sample_rate if isinstance(local, DpSgdRound) else local.sample_rate

    def _apply_fault(self, local: DpSgdRound) -> None:
        optimizer = local.optimizer
        if self.fault in (MechanismFault.NOISE_OFF, MechanismFault.NOISE_QUARTER):
            scale = 0.0 if self.fault is MechanismFault.NOISE_OFF else 0.25
            add_noise = optimizer.add_noise

            def weaker_noise() -> None:  # the accountant's hook, called later, still sees the configured σ
                sigma = optimizer.noise_multiplier
                optimizer.noise_multiplier = sigma * scale
                try:
                    add_noise()
                finally:
                    optimizer.noise_multiplier = sigma

            optimizer.add_noise = weaker_noise  # type: ignore[method-assign]
            if self.fault is MechanismFault.NOISE_OFF:
                local.noise_multiplier = 0.0  # the silent bug: privfed's own noise check sees no noise to look for
        elif self.fault is MechanismFault.SAMPLING_4X:
            if local.sample_rate > 0.25:
                raise ConfigError("--fault", f"sampling_4x needs q <= 1/4 to sample at 4q, the client samples at "
                                             f"q = {local.sample_rate:.3g}: lower training.batch_size")
            local.use_loader(DPDataLoader(local.loader.dataset, sample_rate=4 * local.sample_rate))
        elif self.fault is MechanismFault.CLIPPING_OFF:
            clip = optimizer.clip_and_accumulate

            def unclipped() -> None:  # Opacus' own clipping with an infinite threshold; noise stays σ·C
                bound = optimizer.max_grad_norm
                optimizer.max_grad_norm = math.inf
                try:
                    clip()
                finally:
                    optimizer.max_grad_norm = bound

            optimizer.clip_and_accumulate = unclipped  # type: ignore[method-assign]

    def _sampled(self) -> list[tuple[int, int]]:
        """The included canaries in this step's Poisson batch (each independently with the step's rate)."""
        generator = torch.Generator().manual_seed(derive_seed(self._round_seed, self._steps))
        self._steps += 1
        draws = torch.rand(len(self._included), generator=generator)
        return [c for c, u in zip(self._included, draws.tolist()) if u < self.sample_rate]

    def before_step(self, local: DpSgdRound | PlainRound) -> None:
        sampled = self._sampled()
        if not sampled:
            return
        if isinstance(local, PlainRound):  # no DP: the canaries' gradients join the batch mean unclipped
            with torch.no_grad():
                for tensor, index in sampled:
                    p = self.params[tensor]
                    p.grad.view(-1)[index] += self.magnitude / local.batch_size  # type: ignore[union-attr]
            return
        if len(sampled) * self._total > MAX_CANARY_VALUES:
            raise ConfigError("--canaries", f"{len(sampled)} canaries in one step over {self._total} trainable "
                                            "values would not fit in memory: use fewer canaries or a smaller regime")
        tensors = torch.tensor([t for t, _ in sampled])
        indices = torch.tensor([i for _, i in sampled])
        rows = torch.arange(len(sampled))
        for t, p in enumerate(self.params):  # per-sample rows: zero except each canary's own coordinate
            block = torch.zeros((len(sampled), p.numel()), dtype=p.dtype, device=p.device)
            mine = tensors == t
            block[rows[mine].to(p.device), indices[mine].to(p.device)] = self.magnitude
            grad_sample = p.grad_sample
            if isinstance(grad_sample, list):
                grad_sample = torch.cat(grad_sample, dim=0)
            p.grad_sample = torch.cat([grad_sample, block.view(len(sampled), *p.shape)], dim=0)
