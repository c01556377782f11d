"""Distributed DP (user level): each client clips its whole update and adds a Skellam share of the noise.

Against a server that sees only the secure sum, the sum itself must be private. Each client clips its update to
L2 norm S (DP-FedAvg, McMahan et al. 2018), encodes it to integers with step gamma, and adds Skellam noise
Sk(mu_c) = Poisson(mu_c) - Poisson(mu_c) (Agarwal, Kairouz and Liu, NeurIPS 2021). Skellam is closed under
summation, so the m >= t survivors' shares add up to exactly Sk(m * mu_c): every client adds the share for the
protocol's threshold t, and any round that completes carries at least the full noise Sk(t * mu_c), whose
variance 2 t mu_c equals (z * Delta_2)^2 for noise multiplier z.

Privacy unit: one client's whole update in one round against its absence (zero-out adjacency, as in Kairouz et al.
2021), in the integer domain. Stochastic rounding moves each coordinate by less than one step, so the integer
update has L2 norm Delta_2 <= S / gamma + sqrt(d) and L1 norm Delta_1 <= min(sqrt(d) * Delta_2, Delta_2^2).

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
ORDERS = [*range(2, 65), 80, 96, 128, 192, 256]  # the Skellam bound is proven for integer orders only


@dataclass(frozen=True)
class SkellamShare:
    """The noise one client adds, in encoding steps, for one round."""

    noise_multiplier: float  # z: total noise std = z * Delta_2
    update_clip: float  # S
    step: float  # gamma of the fixed-point encoding
    dimension: int  # d: noised coordinates
    min_clients: int  # t: shares guaranteed to be in any completed sum

    @property
    def l2_sensitivity(self) -> float:
        return self.update_clip / self.step + math.sqrt(self.dimension)

    @property
    def l1_sensitivity(self) -> float:
        return min(math.sqrt(self.dimension) * self.l2_sensitivity, self.l2_sensitivity ** 2)

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

    def tail_bound(self) -> float:
        """|share| stays below this many steps except with probability < 1e-12 per coordinate (7 sigma)."""
        return 7.0 * math.sqrt(2 * self.client_mu)

    def sample(self, size: int, seed: int | None = None) -> np.ndarray:
        """Skellam(client_mu) integers; seeded from the OS CSPRNG unless ``seed`` is given (tests)."""
        rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(32), "big"))
        return rng.poisson(self.client_mu, size).astype(np.int64) - rng.poisson(self.client_mu, size)

    def event(self, client: int, round_idx: int) -> DistributedDpEvent:
        return DistributedDpEvent(client=client, round=round_idx, noise_multiplier=self.noise_multiplier,
                                  update_clip=self.update_clip, step=self.step, dimension=self.dimension,
                                  min_clients=self.min_clients, total_mu=self.total_mu,
                                  l2_sensitivity=self.l2_sensitivity, l1_sensitivity=self.l1_sensitivity)


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
