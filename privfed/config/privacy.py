"""The ``privacy:`` section: record-level DP-SGD (Opacus) and user-level distributed DP inside the secure sum."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from privfed.config.fields import check, described


class DpMode(enum.Enum):
    """How record-level DP-SGD is configured."""

    OFF = "off"  # no DP: reported as epsilon = inf
    FIXED_NOISE = "fixed_noise"  # use privacy.noise_multiplier as given
    TARGET_EPSILON = "target_epsilon"  # calibrate the noise so the planned rounds spend exactly privacy.epsilon


class Accountant(enum.Enum):
    """Opacus accountant used to turn the ledger into epsilon."""

    RDP = "rdp"
    PRV = "prv"


class Clipping(enum.Enum):
    """How Opacus finds each example's gradient norm before clipping it to privacy.max_grad_norm.

    Both give the same clipped, noised gradient and the same epsilon; they differ only in cost.
    """

    PER_SAMPLE = "per_sample"  # materialise every per-sample gradient (B x params): cheap for small adapters
    GHOST = "ghost"  # ghost clipping: norms from activations and output gradients, a second backward pass;
    # memory and time no longer scale with B x params (the full and pretrain regimes). Refuses tied weights.


@dataclass(frozen=True)
class PrivacyConfig:
    mode: DpMode = described("off | fixed_noise | target_epsilon", default=DpMode.TARGET_EPSILON)
    epsilon: float = described("target epsilon per client over the planned rounds", default=8.0)
    delta: float = described("delta of (epsilon, delta)-DP", default=1e-5)
    noise_multiplier: float = described("sigma for fixed_noise mode", default=1.0)
    max_grad_norm: float = described("per-sample clipping norm C", default=1.0)
    max_epsilon: float = described("fixed_noise only: a client stops training before exceeding this (inf = never)",
                                   default=math.inf)
    accountant: Accountant = described("rdp | prv", default=Accountant.RDP)
    clipping: Clipping = described("per_sample | ghost (same privacy; ghost is faster for full/pretrain of large "
                                   "models)",
                                   default=Clipping.PER_SAMPLE)
    distributed_noise: float = described("user-level distributed DP (needs secagg): Skellam noise multiplier z of the "
                                         "secure sum (0 = off)", default=0.0)
    update_clip: float = described("distributed DP: each client's whole update is clipped to this L2 norm S (with "
                                   "clip_quantile: the first round's S); values past aggregation.clip_range are "
                                   "clipped too (rotation spreads them: about S / sqrt(d) each)", default=0.1)
    clip_quantile: float = described("distributed DP: adaptive clipping (Andrew et al. 2021): S follows this quantile "
                                     "of the clients' update norms, learnt from a noised count inside the secure sum "
                                     "(0 = S stays update_clip)", default=0.0)
    max_update_clip: float = described("adaptive clipping: S never grows past this (the words' noise headroom is "
                                       "sized for it)", default=1.0)
    clip_learning_rate: float = described("adaptive clipping: S <- S * exp(-rate * (fraction under S - clip_quantile))",
                                          default=0.2)
    clip_count_noise: float = described("adaptive clipping: the count of clients under S carries this many times "
                                        "distributed_noise clients of noise (> 1); the update's noise grows by "
                                        "r / sqrt(r^2 - 1)", default=3.0)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.epsilon > 0 and not math.isnan(self.epsilon), "privacy.epsilon", f"must be > 0, got {self.epsilon}")
        check(self.mode is not DpMode.TARGET_EPSILON or math.isfinite(self.epsilon), "privacy.epsilon",
              "must be finite with mode target_epsilon; use mode off for epsilon = inf")
        check(0.0 < self.delta < 1.0, "privacy.delta", f"must be in (0, 1), got {self.delta}")
        check(self.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0")
        check(self.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
        check(self.max_epsilon > 0, "privacy.max_epsilon", "must be > 0 (inf = no cap)")
        _check_prv(self)
        check(self.distributed_noise >= 0 and math.isfinite(self.distributed_noise), "privacy.distributed_noise",
              "must be >= 0 (0 = off)")
        check(self.update_clip > 0, "privacy.update_clip", "must be > 0")
        check(self.clip_quantile == 0 or self.update_clip <= self.max_update_clip, "privacy.update_clip",
              "adaptive clipping starts at update_clip, so it must be <= privacy.max_update_clip "
              f"({self.max_update_clip})")
        check(0 <= self.clip_quantile < 1, "privacy.clip_quantile",
              f"must be in [0, 1) (0 = fixed), got {self.clip_quantile}")
        check(self.clip_quantile == 0 or self.distributed_noise > 0, "privacy.clip_quantile",
              "adaptive clipping tracks the update norms of distributed DP: set privacy.distributed_noise > 0")
        check(self.clip_learning_rate > 0 and math.isfinite(self.clip_learning_rate), "privacy.clip_learning_rate",
              f"must be > 0, got {self.clip_learning_rate}")
        check(self.clip_count_noise > 1 and math.isfinite(self.clip_count_noise), "privacy.clip_count_noise",
              f"must be > 1 (the count's noise, in multiples of distributed_noise), got {self.clip_count_noise}")


PRV_MIN_DELTA, PRV_MAX_EPSILON, PRV_MIN_NOISE = 1e-12, 100.0, 0.1



def _check_prv(pr: PrivacyConfig) -> None:
    """Keep Opacus' PRV accountant inside the range where its discretised computation works.

    Outside it Opacus raises mid-run ("Floating point errors will dominate", "Discrete mean differs significantly")
    or searches for minutes; RDP has no such limits, so every message points there.
    """
    if pr.accountant is not Accountant.PRV or pr.mode is DpMode.OFF:
        return
    check(pr.delta >= PRV_MIN_DELTA, "privacy.delta",
          f"must be >= {PRV_MIN_DELTA:g} with accountant prv (float error dominates below); got {pr.delta:g}: "
          "raise it or use privacy.accountant=rdp")
    check(pr.mode is not DpMode.TARGET_EPSILON or pr.epsilon <= PRV_MAX_EPSILON, "privacy.epsilon",
          f"must be <= {PRV_MAX_EPSILON:g} with accountant prv (it cannot account for the tiny noise that larger "
          f"targets need); got {pr.epsilon:g}: lower it or use privacy.accountant=rdp")
    check(pr.mode is not DpMode.FIXED_NOISE or pr.noise_multiplier == 0 or pr.noise_multiplier >= PRV_MIN_NOISE,
          "privacy.noise_multiplier", f"must be 0 or >= {PRV_MIN_NOISE:g} with accountant prv (it cannot account "
          f"for less noise); got {pr.noise_multiplier:g}: raise it or use privacy.accountant=rdp")
