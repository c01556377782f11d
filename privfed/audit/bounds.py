"""One-run privacy auditing: ε lower bounds from how well an attacker picks out the included canaries.

The audit (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", arXiv 2305.08846): m canaries
are each included in training independently with probability 1/2; after the single run an attacker scores every
canary and guesses "included" for the r highest scores; v of those guesses are right. A mechanism that is
(ε, δ)-DP towards every canary cannot make v large often, so a large v *falsifies* small ε claims, and the largest
falsified ε is a lower bound on the true ε that holds with the stated confidence.

Two tests of a claim are given here:

* ``one_run_epsilon``: Steinke et al.'s p-value for a plain (ε, δ)-DP claim.
* ``one_run_epsilon_fdp``: Mahloujifar, Melis & Chaudhuri, "Auditing f-Differential Privacy in One Run"
  (arXiv 2410.22235), testing the stronger claim "the mechanism is as private as the Gaussian mechanism that is
  exactly (ε, δ)-DP". That is the right claim for DP-SGD (whose trade-off curve is Gaussian-like) and gives tighter
  bounds; it is *not* a test of arbitrary (ε, δ)-DP mechanisms (randomized response, for instance, can exceed it).

``one_run_bound`` turns attack scores into both bounds over a grid of guess counts fixed before training, paying for
the choice of grid point with a Bonferroni correction.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import dp_accounting
import numpy as np
from scipy import optimize, special, stats

GUESS_GRID: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Numbers of guesses tried by ``one_run_bound``, as fractions of the canary count. Fixed in advance: choosing the
guess count after seeing the scores would invalidate the confidence level unless it is paid for, as here."""

_XTOL = 1e-9  # absolute tolerance of the root searches (on ε, or on μ for the f-DP bound)
_CEILING = 1024.0  # stop doubling here: no finite audit rejects ε or μ this large, this only guards the loop


@dataclass(frozen=True)
class OneRunBound:
    """The ε lower bounds of one audit, and the counts behind them.

    Both bounds hold jointly over the grid with probability at least ``confidence`` (each grid point was tested at
    significance ``(1 - confidence) / len(grid)``). ``guesses`` and ``correct`` are those of the grid point that
    gave ``epsilon_steinke`` (the first grid point when none gave a positive bound).
    """

    epsilon_steinke: float
    epsilon_fdp: float
    guesses: int
    correct: int
    canaries: int
    included: int
    confidence: float
    delta: float


def one_run_p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``correct`` of ``guesses`` guesses are right] under an (ε, δ)-DP mechanism.

    Steinke et al.: with q = e^ε / (1 + e^ε) (the accuracy of ε-DP randomized response), the bound is
    β + α·δ·2m where β = P[Binomial(guesses, q) ≥ correct] is the pure-DP part and
    α = max_{1≤i≤correct} P[correct > Binomial(guesses, q) ≥ correct − i] / i prices in δ. A small value rejects the
    claim that the mechanism is (ε, δ)-DP.
    """
    _check_counts(m, guesses, correct)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    return _p_value(m, guesses, correct, epsilon, delta)


def one_run_epsilon(m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε whose (ε, δ)-DP claim the audit rejects at significance ``1 - confidence`` (Steinke et al.).

    Returns 0.0 when even ε = 0 cannot be rejected. The p-value grows with ε (whenever 2·m·δ ≤ 1), so the rejected
    claims form an interval [0, ε_lb) and ε_lb is where the p-value crosses the significance level.
    """
    _check_counts(m, guesses, correct)
    _check_delta(delta)
    _check_confidence(confidence)
    return _steinke_epsilon(m, guesses, correct, delta, 1 - confidence)


def one_run_epsilon_fdp(m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε whose Gaussian f-DP claim the audit rejects at significance ``1 - confidence`` (Mahloujifar et al.).

    The claim tested for each ε is "the mechanism's trade-off curve is at least that of the Gaussian mechanism that is
    exactly (ε, δ)-DP", i.e. μ-GDP with μ = 1 / ``dp_accounting.get_sigma_gaussian(ε, δ)``. Returns 0.0 when even
    ε = 0 cannot be rejected.
    """
    _check_counts(m, guesses, correct)
    _check_delta(delta)
    _check_confidence(confidence)
    return _fdp_epsilon(m, guesses, correct, delta, 1 - confidence)


def one_run_bound(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95,
                  grid: tuple[float, ...] = GUESS_GRID) -> OneRunBound:
    """Both one-run ε lower bounds from attack scores (higher = "more likely included") and the true inclusion mask.

    For each fraction f in ``grid`` the attacker guesses "included" for the r = max(1, round(f·m)) highest scores
    (ties broken by canary order, so the result is deterministic) and v counts the right guesses. Each grid point is
    tested at significance (1 - confidence) / len(grid) so that taking the best one keeps the overall confidence.
    The bounds are valid only if each canary was included independently with probability 1/2, before training.
    """
    score_array, mask = _check_observations(scores, included)
    _check_delta(delta)
    _check_confidence(confidence)
    _check_grid(grid)
    m = len(mask)
    right_so_far = np.cumsum(mask[np.argsort(-score_array, kind="stable")])
    significance = (1 - confidence) / len(grid)
    counts = [(r, int(right_so_far[r - 1])) for r in (max(1, round(f * m)) for f in grid)]
    steinke, best = _best_over_grid(counts, 0.0, lambda r, v: _steinke_excess(m, r, v, delta, significance))
    mu, _ = _best_over_grid(counts, _gaussian_mu(0.0, delta), lambda r, v: _fdp_excess(m, r, v, significance))
    return OneRunBound(epsilon_steinke=steinke, epsilon_fdp=_epsilon_of_gaussian_mu(mu, delta), guesses=counts[best][0],
                       correct=counts[best][1], canaries=m, included=int(mask.sum()), confidence=confidence,
                       delta=delta)


def _best_over_grid(counts: list[tuple[int, int]], start: float,
                    excess_at: Callable[[int, int], Callable[[float], float]]) -> tuple[float, int]:
    """The largest rejected parameter over the (guesses, correct) grid points, and the first point that attains it.

    ``start`` is the parameter of the ε = 0 claim. Every search starts at the best value so far, so grid points that
    cannot beat it cost one evaluation of ``excess_at(r, v)`` instead of a root search.
    """
    best, best_index = start, 0
    for index, (guesses, correct) in enumerate(counts):
        value = _largest_rejected(excess_at(guesses, correct), best)
        if value > best:
            best, best_index = value, index
    return best, best_index


def _p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """``one_run_p_value`` without the argument checks (it runs inside the root search)."""
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return min(beta, 1.0)
    # P[correct > B >= correct - i] for i = 1..correct, as running sums of the pmf from correct-1 downwards:
    # summing small positive terms avoids the cancellation of differencing two tail probabilities near 1.
    below = np.cumsum(stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q))
    alpha = float(np.max(below / np.arange(1, correct + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def _steinke_epsilon(m: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    return _largest_rejected(_steinke_excess(m, guesses, correct, delta, significance), 0.0)


def _steinke_excess(m: int, guesses: int, correct: int, delta: float, significance: float
                    ) -> Callable[[float], float]:
    """ε ↦ how far the p-value of the (ε, δ) claim is below ``significance`` (positive = claim rejected)."""
    return lambda epsilon: significance - _p_value(m, guesses, correct, epsilon, delta)


def _fdp_epsilon(m: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    """Searches the Gaussian family by its own parameter μ, then converts the largest rejected μ to ε once.

    Equivalent to searching over ε with σ = get_sigma_gaussian(ε, δ) at every step (ε ↦ μ is increasing), but each
    ε ↔ σ conversion is itself a root search, so converting once instead of at every step is far cheaper.
    """
    mu = _largest_rejected(_fdp_excess(m, guesses, correct, significance), _gaussian_mu(0.0, delta))
    return _epsilon_of_gaussian_mu(mu, delta)


def _fdp_excess(m: int, guesses: int, correct: int, significance: float) -> Callable[[float], float]:
    """μ ↦ a value that is positive exactly when the audit rejects the claim "the mechanism is μ-GDP".

    Mahloujifar et al.'s recursion (``audit_rh_with_cap``): supposing the attacker got at least ``correct`` right
    with probability ``significance``, it lower-bounds the probability mass (per canary, scaled by 1/m) of right and
    wrong guesses that the trade-off curve then forces, peeling off one correct guess at a time. If the forced mass
    exceeds the guesses actually made (guesses / m), the supposition contradicts the claim. The right-guess mass is
    capped at 1. Once the wrong-guess mass stops growing neither mass can change again, so the loop stops early.
    """

    def excess(mu: float) -> float:
        right = significance * correct / m
        wrong = significance * (guesses - correct) / m
        for i in range(correct - 1, -1, -1):
            forced_wrong = max(wrong, _gaussian_blow_up_inverse(right, mu))
            if forced_wrong == wrong:
                break
            right = min(right + i / (guesses - i) * (forced_wrong - wrong), 1.0)
            wrong = forced_wrong
        return right + wrong - guesses / m

    return excess


def _gaussian_blow_up_inverse(x: float, mu: float) -> float:
    """Φ(Φ⁻¹(x) − μ): the least wrong-guess mass that right-guess mass x forces under μ-GDP (trade-off inverse)."""
    return float(special.ndtr(special.ndtri(x) - mu))


@functools.lru_cache(maxsize=256)
def _gaussian_mu(epsilon: float, delta: float) -> float:
    """μ = 1/σ of the Gaussian mechanism (sensitivity 1) that is exactly (ε, δ)-DP (cached: it is a root search)."""
    return 1.0 / dp_accounting.get_sigma_gaussian(epsilon, delta)


def _epsilon_of_gaussian_mu(mu: float, delta: float) -> float:
    """The ε at which μ-GDP is (ε, δ)-DP: the inverse of ``_gaussian_mu``, 0.0 at or below the ε = 0 claim."""
    if mu <= _gaussian_mu(0.0, delta):
        return 0.0
    return float(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta))


def _largest_rejected(excess: Callable[[float], float], floor: float) -> float:
    """The parameter ≥ ``floor`` where ``excess`` (positive = claim rejected, decreasing) changes sign, else ``floor``.

    Returns ``floor`` when the claim at ``floor`` survives (with floor at the ε = 0 claim: "nothing falsified").
    Otherwise doubles an upper end from max(1, 2·floor) until the claim survives, then solves with Brent's method
    inside that bracket.
    """
    if excess(floor) <= 0:
        return floor
    low, high = floor, max(1.0, 2 * floor)
    while excess(high) > 0:
        low, high = high, 2 * high
        if high > _CEILING:
            return low
    return float(optimize.brentq(excess, low, high, xtol=_XTOL))


def _check_counts(m: int, guesses: int, correct: int) -> None:
    if m < 1:
        raise ValueError(f"need at least one canary, got m={m}")
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= m, got correct={correct}, guesses={guesses}, m={m}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_grid(grid: tuple[float, ...]) -> None:
    if not grid or not all(0 < f <= 1 for f in grid):
        raise ValueError(f"grid must be a non-empty tuple of fractions in (0, 1], got {grid}")


def _check_observations(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and the inclusion mask as bool, after checking they describe the same m >= 1 canaries."""
    score_array = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(included)
    if score_array.ndim != 1 or mask.ndim != 1:
        raise ValueError(f"scores and included must be 1-D, got shapes {score_array.shape} and {mask.shape}")
    if len(score_array) != len(mask):
        raise ValueError(f"scores and included differ in length: {len(score_array)} != {len(mask)}")
    if len(mask) == 0:
        raise ValueError("no canaries: scores and included are empty")
    if np.isnan(score_array).any():
        raise ValueError(f"scores contain {int(np.isnan(score_array).sum())} NaN value(s)")
    if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"included must be a boolean mask (or 0/1), got dtype {mask.dtype}")
    return score_array, mask.astype(bool)
