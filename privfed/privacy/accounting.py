"""Turn ledger events into epsilon with Opacus' accountants, and calibrate noise to a target epsilon.

No accountant formula is written here: composition and conversion are Opacus' (RDP or PRV), and the tests
cross-check the result against Google's dp_accounting.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

from privfed.config import Accountant
from privfed.privacy.ledger import DpSgdEvent

ACCOUNTANT_NAMES = {Accountant.RDP: "opacus.RDPAccountant", Accountant.PRV: "opacus.PRVAccountant"}


def new_accountant(kind: Accountant) -> IAccountant:
    return RDPAccountant() if kind is Accountant.RDP else PRVAccountant()


def history_of(events: Iterable[DpSgdEvent]) -> list[tuple[float, float, int]]:
    """Opacus history entries ``(noise_multiplier, sample_rate, steps)``, merging runs of equal mechanisms."""
    history: list[tuple[float, float, int]] = []
    for e in events:
        if history and history[-1][:2] == (e.noise_multiplier, e.sample_rate):
            history[-1] = (e.noise_multiplier, e.sample_rate, history[-1][2] + e.steps)
        else:
            history.append((e.noise_multiplier, e.sample_rate, e.steps))
    return history


def epsilon_of_history(history: list[tuple[float, float, int]], delta: float, kind: Accountant) -> float:
    """Epsilon of a composed history; 0 for no steps and inf when any step had no noise.

    Memoised: the clients of a federation share a handful of distinct histories, and every round reports each.
    """
    return _epsilon(tuple(tuple(h) for h in history), delta, kind)


@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, kind: Accountant) -> float:
    steps = [h for h in history if h[2] > 0]
    if not steps:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in steps):
        return math.inf
    accountant = new_accountant(kind)
    accountant.history = list(steps)
    return float(accountant.get_epsilon(delta=delta))


def epsilon_of_events(events: Iterable[DpSgdEvent], delta: float, kind: Accountant) -> float:
    return epsilon_of_history(history_of(events), delta, kind)


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: Accountant) -> float:
    """Smallest noise multiplier (to Opacus' tolerance) that keeps ``steps`` DP-SGD steps within the target."""
    with warnings.catch_warnings():  # the bisection probes tiny sigmas whose optimal RDP order is out of range
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=kind.value))
