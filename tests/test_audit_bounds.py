"""One-run ε lower bounds: a golden value, agreement with jax-privacy's reference, monotonicity, statistical validity
on mechanisms whose ε is known, and argument checks. Cheap: the whole file runs in a few seconds."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from privfed.audit.bounds import (
    GUESS_GRID,
    OneRunBound,
    one_run_bound,
    one_run_epsilon,
    one_run_epsilon_fdp,
    one_run_p_value,
)

DELTA = 1e-5
CONFIDENCE = 0.95


@functools.cache
def _load_reference():
    """jax-privacy's auditing.py loaded by path: the package's ``__init__`` imports jax, which is not installed.

    Raises (so tests fail rather than skip) when jax-privacy is missing: ``pip install --no-deps jax-privacy==2.0.0``.
    """
    spec = importlib.util.find_spec("jax_privacy")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("jax-privacy is not installed: pip install --no-deps jax-privacy==2.0.0")
    module_spec = importlib.util.spec_from_file_location(
        "_jax_privacy_auditing", Path(spec.submodule_search_locations[0]) / "auditing.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # its dataclasses look their module up here while being defined
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return _load_reference()


@functools.cache
def _reference_epsilons(m: int, guesses: int, correct: int, delta: float, significance: float) -> tuple[float, float]:
    """(Steinke, f-DP) bounds of the reference's private functions; cached because its f-DP search is slow."""
    reference = _load_reference()
    return (reference._epsilon_one_run(0, m, guesses, correct, significance, delta),
            reference._epsilon_one_run_fdp(0, m, guesses, correct, significance, delta))


def _scores_with_signal(m: int, seed: int, shift: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    return rng.normal(size=m) + shift * included, included


def test_golden_value_all_correct():
    epsilon = one_run_epsilon(1000, 1000, 1000, DELTA, confidence=0.95)
    assert epsilon == pytest.approx(5.7823, abs=0.02)
    assert round(epsilon, 2) == 5.78


# (m, guesses, correct, delta): v = 0, v = r, r = m, small m, and ordinary cases.
REFERENCE_CASES = [(1000, 1000, 1000, 1e-5), (1000, 100, 90, 1e-5), (1000, 10, 0, 1e-5), (2000, 20, 20, 1e-5),
                   (200, 20, 20, 1e-6), (60, 60, 45, 1e-4), (10, 10, 10, 1e-3), (10, 5, 5, 1e-2), (1, 1, 1, 1e-5)]


@pytest.mark.parametrize("m, guesses, correct, delta", [*REFERENCE_CASES, (1000, 1000, 600, 1e-5)])
def test_p_values_match_reference(reference, m, guesses, correct, delta):
    for epsilon in (0.0, 0.5, 1.0, 2.0, 4.0):
        expected = reference._one_run_p_value(m, guesses, correct, epsilon, delta)
        assert one_run_p_value(m, guesses, correct, epsilon, delta) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("m, guesses, correct, delta, confidence",
                         [(*case, CONFIDENCE) for case in REFERENCE_CASES] + [(1000, 100, 90, 1e-5, 0.99)])
def test_epsilon_bounds_match_reference(reference, m, guesses, correct, delta, confidence):
    steinke, fdp = _reference_epsilons(m, guesses, correct, delta, 1 - confidence)
    assert one_run_epsilon(m, guesses, correct, delta, confidence) == pytest.approx(steinke, abs=1e-5)
    assert one_run_epsilon_fdp(m, guesses, correct, delta, confidence) == pytest.approx(fdp, abs=1e-5)


def test_one_run_bound_matches_reference_auditor_at_the_grid_thresholds(reference):
    # The reference's Bonferroni strategy searches every distinct score as a threshold and divides by their number,
    # a different (data-chosen) family than the fixed grid; so compare at the grid's own thresholds with Explicit.
    m, grid = 400, (0.01, 0.2, 0.5)  # a short grid keeps the reference's (slow) f-DP searches few
    scores, included = _scores_with_signal(m, seed=0)
    auditor = reference.CanaryScoreAuditor(scores[included], scores[~included])
    descending = np.sort(scores)[::-1]  # continuous scores: no ties, so threshold r-th score <=> top r guesses
    significance = 0.05 / len(grid)
    steinke, fdp = [], []
    for fraction in grid:
        strategy = reference.Explicit(descending[max(1, round(fraction * m)) - 1])
        steinke.append(auditor.epsilon_one_run(significance, DELTA, threshold_strategy=strategy))
        fdp.append(auditor.epsilon_one_run_fdp(significance, DELTA, threshold_strategy=strategy))
    bound = one_run_bound(scores, included, DELTA, confidence=0.95, grid=grid)
    assert max(steinke) > 1.0 and max(fdp) > 1.0  # the comparison is not between zeros
    assert bound.epsilon_steinke == pytest.approx(max(steinke), abs=1e-5)
    assert bound.epsilon_fdp == pytest.approx(max(fdp), abs=1e-5)
    assert bound.guesses == max(1, round(grid[int(np.argmax(steinke))] * m))

    single = one_run_bound(scores, included, DELTA, confidence=0.95, grid=(0.1,))  # one point: no correction
    strategy = reference.Explicit(descending[round(0.1 * m) - 1])
    assert single.epsilon_steinke == pytest.approx(auditor.epsilon_one_run(0.05, DELTA, threshold_strategy=strategy),
                                                   abs=1e-5)
    assert single.epsilon_fdp == pytest.approx(auditor.epsilon_one_run_fdp(0.05, DELTA, threshold_strategy=strategy),
                                               abs=1e-5)


def test_more_correct_guesses_never_lower_the_bound():
    for bound in (one_run_epsilon, one_run_epsilon_fdp):
        values = [bound(1000, 200, correct, DELTA) for correct in range(100, 201, 10)]
        assert values[0] == 0.0 and values[-1] > 2.0
        assert np.all(np.diff(values) >= -1e-9), values


def test_larger_delta_never_raises_the_bound():
    deltas = [1e-10, 1e-8, 1e-6, 1e-5, 1e-4, 5e-4]  # up to 2·m·δ = 1
    for bound in (one_run_epsilon, one_run_epsilon_fdp):
        for guesses, correct in ((100, 100), (500, 420)):
            values = [bound(1000, guesses, correct, delta) for delta in deltas]
            assert np.all(np.diff(values) <= 1e-9), values


@pytest.mark.parametrize("m, guesses, delta", [(1000, 1000, 1e-5), (2000, 20, 1e-5), (200, 20, 1e-6), (10, 10, 1e-3)])
def test_fdp_bound_at_least_steinke_when_all_guesses_are_right(reference, m, guesses, delta):
    steinke, fdp = _reference_epsilons(m, guesses, guesses, delta, 1 - CONFIDENCE)
    assert fdp >= steinke > 0  # true of the reference too, so not an artefact of this implementation
    assert one_run_epsilon_fdp(m, guesses, guesses, delta) >= one_run_epsilon(m, guesses, guesses, delta) > 0


def test_wrong_or_random_guesses_give_zero():
    assert one_run_epsilon(1000, 100, 0, DELTA) == 0.0
    assert one_run_epsilon_fdp(1000, 100, 0, DELTA) == 0.0
    assert one_run_epsilon(1000, 100, 50, DELTA) == 0.0
    assert one_run_epsilon_fdp(1000, 100, 50, DELTA) == 0.0
    _, included = _scores_with_signal(1000, seed=1)
    all_wrong = one_run_bound(-included.astype(float), included, DELTA)  # the included canaries ranked last
    assert (all_wrong.epsilon_steinke, all_wrong.epsilon_fdp) == (0.0, 0.0)


def test_uninformative_scores_rarely_give_a_bound():
    bounds = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        bound = one_run_bound(rng.normal(size=1000), rng.random(1000) < 0.5, DELTA)
        bounds.append((bound.epsilon_steinke, bound.epsilon_fdp))
    exceed = (np.array(bounds) > 0.5).sum(axis=0)
    assert exceed[0] <= 3 and exceed[1] <= 3, exceed


def test_randomized_response_bound_stays_below_its_epsilon():
    # Each canary's score is its inclusion bit, kept with probability e^ε/(1+e^ε): exactly ε-DP towards each canary.
    epsilon, steinke, fdp = 2.0, [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        included = rng.random(500) < 0.5
        keep = rng.random(500) < np.exp(epsilon) / (1 + np.exp(epsilon))
        bound = one_run_bound(np.where(keep, included, ~included).astype(float), included, DELTA)
        steinke.append(bound.epsilon_steinke)
        fdp.append(bound.epsilon_fdp)
    assert sum(e <= epsilon for e in steinke) >= 38, steinke
    assert np.mean(steinke) > 1.0  # the audit has power: it is not trivially below ε
    # Randomized response is not as private as the Gaussian mechanism with the same (ε, δ) (its trade-off curve dips
    # below the Gaussian one), so the f-DP audit, which tests the Gaussian claim, rightly exceeds ε here.
    assert sum(e > epsilon for e in fdp) > 20


def test_gaussian_mechanism_bounds_stay_below_its_epsilon():
    # Score = inclusion bit + N(0, σ²) with σ calibrated to exactly (ε, δ): μ-GDP, the claim the f-DP audit tests.
    epsilon = 4.0
    sigma = dp_accounting.get_sigma_gaussian(epsilon, DELTA)
    bounds = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        included = rng.random(500) < 0.5
        bound = one_run_bound(included + rng.normal(scale=sigma, size=500), included, DELTA)
        bounds.append((bound.epsilon_steinke, bound.epsilon_fdp))
    bounds = np.array(bounds)
    assert np.all((bounds <= epsilon).sum(axis=0) >= 38), bounds
    assert bounds[:, 1].mean() > bounds[:, 0].mean() > 0.5  # f-DP is the tighter audit of a Gaussian mechanism


def test_bound_reports_counts_and_breaks_ties_by_canary_order():
    included = np.arange(100) < 50
    bound = one_run_bound(np.zeros(100), included, DELTA, grid=(0.5,))  # all tied: the first 50 canaries guessed
    assert (bound.guesses, bound.correct, bound.canaries, bound.included) == (50, 50, 100, 50)
    assert bound.epsilon_steinke == one_run_epsilon(100, 50, 50, DELTA)
    assert one_run_bound(np.zeros(100), included.astype(int), DELTA, grid=(0.5,)) == bound
    with pytest.raises(dataclasses.FrozenInstanceError):
        bound.guesses = 3
    assert isinstance(bound, OneRunBound) and (bound.confidence, bound.delta) == (0.95, DELTA)
    scores, included = _scores_with_signal(300, seed=2)
    assert one_run_bound(scores, included, DELTA).guesses in {max(1, round(f * 300)) for f in GUESS_GRID}


@pytest.mark.parametrize("scores, included, kwargs, message", [
    (np.zeros(3), np.ones(4, bool), {}, "differ in length"),
    (np.zeros(0), np.ones(0, bool), {}, "no canaries"),
    (np.array([0.0, np.nan]), np.ones(2, bool), {}, "NaN"),
    (np.zeros((2, 2)), np.ones((2, 2), bool), {}, "1-D"),
    (np.zeros(2), np.array([0, 2]), {}, "boolean mask"),
    (np.zeros(2), np.ones(2, bool), {"confidence": 1.0}, "confidence"),
    (np.zeros(2), np.ones(2, bool), {"confidence": 0.0}, "confidence"),
    (np.zeros(2), np.ones(2, bool), {"delta": 0.0}, "delta"),
    (np.zeros(2), np.ones(2, bool), {"delta": 1.0}, "delta"),
    (np.zeros(2), np.ones(2, bool), {"grid": ()}, "grid"),
    (np.zeros(2), np.ones(2, bool), {"grid": (0.0, 0.5)}, "grid"),
])
def test_bound_rejects_bad_input(scores, included, kwargs, message):
    with pytest.raises(ValueError, match=message):
        one_run_bound(scores, included, **{"delta": DELTA, **kwargs})


@pytest.mark.parametrize("call, message", [
    (lambda: one_run_p_value(0, 0, 0, 1.0, DELTA), "at least one canary"),
    (lambda: one_run_p_value(10, 5, 6, 1.0, DELTA), "correct <= guesses"),
    (lambda: one_run_p_value(10, 11, 1, 1.0, DELTA), "guesses <= m"),
    (lambda: one_run_p_value(10, 5, 1, -1.0, DELTA), "epsilon"),
    (lambda: one_run_p_value(10, 5, 1, 1.0, 1.5), "delta"),
    (lambda: one_run_epsilon(10, 5, 1, 0.0), "delta"),
    (lambda: one_run_epsilon(10, 5, 1, DELTA, confidence=1.0), "confidence"),
    (lambda: one_run_epsilon_fdp(10, 5, -1, DELTA), "correct"),
    (lambda: one_run_epsilon_fdp(10, 5, 1, DELTA, confidence=0.0), "confidence"),
])
def test_scalar_functions_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
