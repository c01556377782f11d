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
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

from privfed.config import Accountant
from privfed.errors import ConfigError
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
    Config validation keeps the PRV accountant inside its working range; should Opacus still fail, the error
    names the setting to change instead of surfacing as a traceback.
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
    try:
        return float(accountant.get_epsilon(delta=delta))
    except (ValueError, RuntimeError) as err:
        raise ConfigError("privacy.accountant", f"Opacus' {kind.value} accountant cannot compute epsilon for noise "
                          f"multipliers {sorted({h[0] for h in steps})} at delta {delta:g} ({err}); use "
                          "privacy.accountant=rdp") from None


def epsilon_of_events(events: Iterable[DpSgdEvent], delta: float, kind: Accountant) -> float:
    return epsilon_of_history(history_of(events), delta, kind)


def _require_above_rdp_floor(target_epsilon: float, delta: float) -> None:
    """Refuse targets the RDP accountant cannot certify at ``delta`` however much noise is added.

    Its conversion to (epsilon, delta) over a finite grid of orders leaves a floor (about 0.1 at delta 1e-5)
    that no noise multiplier, sampling rate or step count goes below. Checked up front: Opacus would otherwise
    search up to MAX_SIGMA, which takes minutes at some sampling rates, only to fail.
    """
    with warnings.catch_warnings():  # at MAX_SIGMA the best order is the grid's largest, by construction
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        floor = epsilon_of_history([(MAX_SIGMA, 1.0, 1)], delta, Accountant.RDP)
    if target_epsilon <= floor:
        raise ConfigError("privacy.epsilon", f"target {target_epsilon:g} is below {floor:.3g}, the least the rdp "
                          f"accountant can certify at privacy.delta={delta:g} however much noise is added; choose a "
                          "larger privacy.epsilon or privacy.delta, use privacy.accountant=prv, or use "
                          "privacy.mode=fixed_noise")


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: Accountant) -> float:
    """Smallest noise multiplier (to Opacus' tolerance) that keeps ``steps`` DP-SGD steps within the target.

    Opacus gives up with "The privacy budget is too low" when even its largest noise multiplier (MAX_SIGMA) spends
    more than the target; that is a config problem, so it is raised as one, with the settings that move the target
    within reach.
    """
    if kind is Accountant.RDP:
        _require_above_rdp_floor(target_epsilon, delta)
    try:
        with warnings.catch_warnings():  # the bisection probes tiny sigmas whose optimal RDP order is out of range
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=kind.value))
    except ValueError:
        raise ConfigError("privacy.epsilon", f"target {target_epsilon:g} is too small for {steps} DP-SGD steps at "
                          f"sampling rate {sample_rate:.3g}: no noise multiplier up to {MAX_SIGMA:g} reaches it; "
                          "give each client more data (a lower sampling rate), plan fewer training.rounds or "
                          "training.local_steps, choose a larger privacy.epsilon, or use privacy.mode=fixed_noise"
                          ) from None
    except RuntimeError as err:
        raise ConfigError("privacy.epsilon", f"Opacus' {kind.value} accountant cannot calibrate noise for target "
                          f"{target_epsilon:g} ({err}); choose a smaller privacy.epsilon or use "
                          "privacy.accountant=rdp") from None
