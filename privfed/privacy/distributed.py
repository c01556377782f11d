"""Distributed DP (user level): each client clips its whole update and adds a Skellam share of the noise.

Against a server that sees only the secure sum, the sum itself must be private. Each client clips its update to
L2 norm S (DP-FedAvg, McMahan et al. 2018), encodes it to integers with step gamma, and adds Skellam noise
Sk(mu_c) = Poisson(mu_c) - Poisson(mu_c) (Agarwal, Kairouz and Liu, NeurIPS 2021). Skellam is closed under
summation, so the m >= t survivors' shares add up to exactly Sk(m * mu_c): every client adds the share for the
protocol's threshold t, and any round that completes carries at least the full noise Sk(t * mu_c), whose
variance 2 t mu_c equals (z * Delta_2)^2 for noise multiplier z.

Privacy unit: one client's whole update in one round against its absence (zero-out adjacency, as in Kairouz et al.
2021), in the integer domain. Stochastic rounding moves each coordinate by less than one step, so the integer
update could have L2 norm up to S / gamma + sqrt(d); conditional randomized rounding (Kairouz, Liu and Steinke,
ICML 2021, "The distributed discrete Gaussian mechanism", section 4) tightens it: the client rounds again until
the integer update's norm is within
Delta_2^2 = min((S / gamma)^2 + d / 4 + sqrt(2 ln(1 / beta)) (S / gamma + sqrt(d) / 2), (S / gamma + sqrt(d))^2),
which a stochastic rounding meets with probability at least 1 - beta (beta = exp(-1/2) here, as in their
experiments). The check, not the probability, is what enforces the bound, so Delta_2 holds for every client. At few
bits, where sqrt(d) rivals S / gamma, this takes the noise down by up to half. L1: Delta_1 <= min(sqrt(d) Delta_2,
Delta_2^2).

Adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially private learning with adaptive clipping"): with
``privacy.clip_quantile`` the clip norm C of each round follows a target quantile of the clients' update norms.
Each client also sends one bit, b = [norm <= C], as an exact integer of s_b steps in an extra coordinate of the same
secure sum, so the bit is noised by the same Skellam shares. Its sensitivity joins the update's: the round is one
Skellam mechanism with L2 sensitivity sqrt(Delta_u^2 + s_b^2), accounted like any other round. s_b is chosen so
the count of clients under the clip carries noise of r * z clients (``privacy.clip_count_noise`` r > 1): then
s_b = Delta_u / sqrt(r^2 - 1) and the update's own noise multiplier grows from z to z r / sqrt(r^2 - 1) — the
integer form of Andrew et al.'s sigma_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (their bit is centred at 1/2, with
sensitivity 1/2; here it is 0/1 under zero-out adjacency, sensitivity 1).

Wrap-around: the noisy sum lives modulo 2^k. Values are bounded, the noise is not, so a word leaves ``slack`` steps
above the largest exact sum and the probability that the noise of any coordinate exceeds it is bounded by
Chernoff's bound for the Skellam distribution, P(X >= t) <= exp(-t asinh(t / 2 mu) + 2 mu (sqrt(1 + (t / 2 mu)^2)
- 1)) (the moment generating function of Sk(mu) is exp(2 mu (cosh s - 1))), union-bounded over the coordinates.
Modular wrap-around is post-processing: it costs utility, never privacy; the bound is reported and held below
``aggregation.max_wrap_probability``, and a sum that wrapped anyway is caught by the server's range check.

Accounting: the mechanism's RDP curve is Agarwal et al.'s Skellam bound (taken with 2 alpha in place of their
2 alpha - 1, the slightly looser form their reference code uses); composition over rounds adds RDP and the
conversion to (epsilon, delta) is Opacus' ``get_privacy_spent``. No client-sampling amplification is claimed.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from opacus.accountants.analysis.rdp import get_privacy_spent

from privfed.errors import ConfigError
from privfed.privacy.ledger import DistributedDpEvent

MAX_POISSON_MU = 1e18
ROUNDING_BETA = math.exp(-0.5)  # conditional randomized rounding: each try passes with probability >= 1 - beta
MAX_ROUNDING_TRIES = 200  # (1 - 0.39)^200 < 1e-40: reaching it means a bug, not bad luck
ORDERS = [*range(2, 65), 80, 96, 128, 192, 256]  # the Skellam bound is proven for integer orders only


@dataclass(frozen=True)
class DistributedDp:
    """The distributed-DP settings the secure-aggregation back-end needs (None when distributed DP is off)."""

    noise_multiplier: float  # z
    update_clip: float  # S: the fixed clip norm, or adaptive clipping's first
    count_noise: float = 0.0  # r > 1 with adaptive clipping (the count's noise, in multiples of z); 0 = fixed clip
    max_update_clip: float = 0.0  # adaptive clipping: the largest S (0: S is fixed)

    @property
    def counts_under_clip(self) -> bool:
        return self.count_noise > 0

    @property
    def largest_clip(self) -> float:
        """The largest S any round may use: the noise headroom of the words is sized for it."""
        return self.max_update_clip if self.counts_under_clip else self.update_clip

    @classmethod
    def from_privacy(cls, privacy) -> DistributedDp | None:
        """From a :class:`~privfed.config.PrivacyConfig`; None when ``distributed_noise`` is 0."""
        if privacy.distributed_noise <= 0:
            return None
        if privacy.clip_quantile <= 0:
            return cls(privacy.distributed_noise, privacy.update_clip)
        return cls(privacy.distributed_noise, privacy.update_clip, privacy.clip_count_noise, privacy.max_update_clip)


def count_steps(update_l2_sensitivity: float, count_noise: float) -> int:
    """s_b: the integer steps one client's 'under the clip' bit takes, so the count carries r * z clients of noise
    (r = ``count_noise``; 0 when not counting)."""
    if count_noise <= 0:
        return 0
    return max(1, round(update_l2_sensitivity / math.sqrt(count_noise ** 2 - 1)))


def skellam_tail(mu: float, t: float) -> float:
    """Chernoff's bound on P(X >= t) for X ~ Sk(mu) (= P(X <= -t)); 1 for t <= 0."""
    if t <= 0:
        return 1.0
    if mu <= 0:
        return 0.0
    x = t / (2 * mu)
    # 2 mu (sqrt(1 + x^2) - 1) in a form that keeps its precision when x is tiny (mu far above t^2)
    return math.exp(min(0.0, -t * math.asinh(x) + 2 * mu * x * x / (math.hypot(1.0, x) + 1.0)))


def wrap_probability(mu: float, slack: float, coordinates: int) -> float:
    """Union bound on a round's chance that the Sk(mu) noise of any of ``coordinates`` leaves [-slack, slack]."""
    return min(1.0, 2 * coordinates * skellam_tail(mu, slack + 1))  # integer noise: |X| > slack means |X| >= slack+1


def wrap_slack(mu: float, coordinates: int, probability: float) -> int:
    """The fewest steps of headroom for which :func:`wrap_probability` is at most ``probability``."""
    low, high = 0, max(1, math.ceil(math.sqrt(2 * mu)))
    while wrap_probability(mu, high, coordinates) > probability:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if wrap_probability(mu, middle, coordinates) > probability else (low, middle)
    return low


@dataclass(frozen=True)
class SkellamShare:
    """The noise one client adds, in encoding steps, for one round."""

    noise_multiplier: float  # z: total noise std = z * Delta_2
    update_clip: float  # S
    step: float  # gamma of the fixed-point encoding
    dimension: int  # d: noised coordinates
    min_clients: int  # t: shares guaranteed to be in any completed sum
    count_noise: float = 0.0  # r: adaptive clipping's count carries r * z clients of noise (0 = no count)

    @property
    def update_l2_sensitivity(self) -> float:
        """Delta_u of the clipped update after conditional randomized rounding, in steps (see the module)."""
        c, d = self.update_clip / self.step, self.dimension
        conditional = c * c + d / 4 + math.sqrt(2 * math.log(1 / ROUNDING_BETA)) * (c + math.sqrt(d) / 2)
        return math.sqrt(min(conditional, (c + math.sqrt(d)) ** 2))

    @property
    def count_steps(self) -> int:
        return count_steps(self.update_l2_sensitivity, self.count_noise)

    @property
    def l2_sensitivity(self) -> float:
        """Of everything the client adds: the update and, with adaptive clipping, its bit of s_b steps."""
        return math.hypot(self.update_l2_sensitivity, self.count_steps)

    @property
    def l1_sensitivity(self) -> float:
        u = self.update_l2_sensitivity
        return min(math.sqrt(self.dimension) * u, u ** 2) + self.count_steps

    @property
    def update_noise_multiplier(self) -> float:
        """The noise on the update relative to Delta_u: z, or z r / sqrt(r^2 - 1) when the count shares it."""
        return self.noise_multiplier * self.l2_sensitivity / self.update_l2_sensitivity

    @property
    def count_noise_std(self) -> float:
        """The standard deviation of the noisy count, in clients (inf without a count)."""
        return math.sqrt(2 * self.total_mu) / self.count_steps if self.count_steps else math.inf

    @property
    def total_mu(self) -> float:
        """mu of the guaranteed total Sk(mu): variance 2 mu = (z Delta_2)^2."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2 / 2

    @property
    def client_mu(self) -> float:
        return self.total_mu / self.min_clients

    def check_sampleable(self) -> None:
        """numpy's Poisson sampler stops near 1e19; far below that the encoding is needlessly fine anyway."""
        if self.client_mu > MAX_POISSON_MU:
            raise ConfigError("aggregation.value_bits", f"with distributed noise, each client's Skellam parameter "
                              f"would be {self.client_mu:.2e} steps^2 (> {MAX_POISSON_MU:.0e}); lower value_bits")

    def slack(self, num_shares: int, coordinates: int, probability: float) -> int:
        """Steps of headroom the sum of ``num_shares`` shares over ``coordinates`` needs to wrap with at most
        ``probability`` per round."""
        return wrap_slack(num_shares * self.client_mu, coordinates, probability)

    def sample(self, size: int, seed: int | None = None) -> np.ndarray:
        """Skellam(client_mu) integers; seeded from the OS CSPRNG unless ``seed`` is given (tests)."""
        rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(32), "big"))
        return rng.poisson(self.client_mu, size).astype(np.int64) - rng.poisson(self.client_mu, size)

    def event(self, client: int, round_idx: int) -> DistributedDpEvent:
        return DistributedDpEvent(client=client, round=round_idx, noise_multiplier=self.noise_multiplier,
                                  update_clip=self.update_clip, step=self.step, dimension=self.dimension,
                                  min_clients=self.min_clients, total_mu=self.total_mu,
                                  l2_sensitivity=self.l2_sensitivity, l1_sensitivity=self.l1_sensitivity,
                                  count_steps=self.count_steps)


def skellam_rdp(alpha: float, mu: float, l2: float, l1: float) -> float:
    """RDP of order alpha of the Skellam mechanism Sk(mu) with integer sensitivities l2, l1 (Agarwal et al.)."""
    return alpha * l2 ** 2 / (4 * mu) + min((2 * alpha * l2 ** 2 + 6 * l1) / (16 * mu ** 2), 3 * l1 / (4 * mu))


def user_epsilon(events: Iterable[DistributedDpEvent], delta: float) -> float:
    """User-level epsilon of one client over its distributed-DP rounds (0 when there were none)."""
    events = list(events)
    if not events:
        return 0.0
    if any(e.noise_multiplier <= 0 for e in events):
        return math.inf
    rdp = [sum(skellam_rdp(a, e.total_mu, e.l2_sensitivity, e.l1_sensitivity) for e in events) for a in ORDERS]
    with warnings.catch_warnings():  # at tiny noise the best order is 2, the smallest the bound allows: still valid
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        epsilon, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)
