"""The robust aggregation rules against brute-force references written with plain loops, plus their defining properties.

Inputs come from hypothesis: small matrices (n <= 9, d <= 6) whose entries are either reals in [-10, 10] or drawn from
{-2, ..., 2}, so that ties (equal values, equal Krum scores) are common. Integer entries make every Krum distance
exact, so there the chosen inputs must match the reference's tie-breaking exactly; with real entries two scores can
differ only by rounding, so there a choice passes if its reference score is within rounding of the best.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privfed.aggregation.robust import (
    CenteredClip,
    Combined,
    CoordinateMedian,
    Krum,
    Mean,
    MultiKrum,
    NormBound,
    RobustRule,
    TrimmedMean,
)

TOL = {"rtol": 1e-9, "atol": 1e-12}
FAST = settings(max_examples=60, deadline=None)
REALS = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)
SMALL_INTS = st.integers(-2, 2).map(float)


@st.composite
def matrices(draw, min_n: int = 1, max_n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """(updates, weights) with n in [min_n, max_n], d in [1, 6]."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 6))
    updates = draw(hnp.arrays(np.float64, (n, d), elements=draw(st.sampled_from([REALS, SMALL_INTS]))))
    weights = draw(hnp.arrays(np.float64, n, elements=st.floats(0.1, 10)))
    return updates, weights


def check(out: Combined, update: list[float], kept: list[float]) -> None:
    assert out.update.dtype == np.float64 and out.kept.dtype == np.float64
    assert out.kept.shape == (len(kept),) and np.all((out.kept >= 0) & (out.kept <= 1))
    np.testing.assert_allclose(out.update, update, **TOL)
    np.testing.assert_allclose(out.kept, kept, **TOL)


# ---- brute-force references: lists and loops only ----

def ref_weighted_mean(rows: list[list[float]], weights: list[float], factors: list[float]) -> list[float]:
    total = sum(weights)
    return [sum(w * c * row[j] for row, w, c in zip(rows, weights, factors)) / total for j in range(len(rows[0]))]


def ref_clip(vector: list[float], limit: float) -> float:
    norm = math.sqrt(sum(x * x for x in vector))
    return 1.0 if norm <= limit else limit / norm


def ref_sorted_slice(rows: list[list[float]], low: int, high: int) -> tuple[list[float], list[float]]:
    """Per column, the mean of sorted positions low..high-1 (ties by index), and each row's share of those slots."""
    n, d = len(rows), len(rows[0])
    update, counts = [], [0] * n
    for j in range(d):
        column = [rows[i][j] for i in range(n)]
        middle = sorted(range(n), key=lambda i: column[i])[low:high]  # sorted() is stable
        update.append(sum(column[i] for i in middle) / len(middle))
        for i in middle:
            counts[i] += 1
    return update, [c / d for c in counts]


def ref_median(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    n = len(rows)
    return ref_sorted_slice(rows, n // 2, n // 2 + 1) if n % 2 else ref_sorted_slice(rows, n // 2 - 1, n // 2 + 1)


def ref_krum_scores(rows: list[list[float]], f: int) -> list[float]:
    n = len(rows)
    scores = []
    for i in range(n):
        distances = []
        for j in range(n):
            if j != i:
                distances.append(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])))
        scores.append(sum(sorted(distances)[: n - f - 2]))
    return scores


def ref_centered_clip(rows: list[list[float]], radius: float, iterations: int,
                      center: list[float]) -> tuple[list[float], list[float]]:
    n = len(rows)
    for _ in range(iterations):
        step, factors = [0.0] * len(center), []
        for row in rows:
            diff = [a - b for a, b in zip(row, center)]
            factors.append(ref_clip(diff, radius))
            step = [s + factors[-1] * x / n for s, x in zip(step, diff)]
        center = [c + s for c, s in zip(center, step)]
    return center, factors


def assert_lowest_scores(scores: list[float], chosen: list[int], updates: np.ndarray) -> None:
    """``chosen`` are the lowest scores: exactly the reference's picks for integer entries, within rounding otherwise."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    if np.array_equal(updates, np.round(updates)):
        assert chosen == sorted(order[: len(chosen)])
    slack = 1e-9 * (1 + max(scores))
    rest = [scores[i] for i in range(len(scores)) if i not in chosen]
    assert max(scores[i] for i in chosen) <= min(rest, default=math.inf) + slack


# ---- each rule against its reference ----

@FAST
@given(matrices())
def test_mean_matches_reference(data):
    u, w = data
    check(Mean().combine(u, w), ref_weighted_mean(u.tolist(), w.tolist(), [1.0] * len(u)), [1.0] * len(u))


@FAST
@given(matrices(), st.floats(0.1, 20))
def test_norm_bound_matches_reference(data, bound):
    u, w = data
    factors = [ref_clip(row, bound) for row in u.tolist()]
    check(NormBound(bound).combine(u, w), ref_weighted_mean(u.tolist(), w.tolist(), factors), factors)


@FAST
@given(matrices())
def test_median_matches_reference_and_numpy(data):
    u, w = data
    out = CoordinateMedian().combine(u, w)
    check(out, *ref_median(u.tolist()))
    np.testing.assert_array_equal(out.update, np.median(u, axis=0))
    assert np.all((u.min(axis=0) <= out.update) & (out.update <= u.max(axis=0)))


@FAST
@given(matrices(), st.floats(0, 0.499))
def test_trimmed_mean_matches_reference(data, trim_fraction):
    u, w = data
    n = len(u)
    k = math.floor(trim_fraction * n)
    out = TrimmedMean(trim_fraction).combine(u, w)
    check(out, *ref_sorted_slice(u.tolist(), k, n - k))
    assert np.all((u.min(axis=0) <= out.update) & (out.update <= u.max(axis=0)))


@st.composite
def krum_inputs(draw) -> tuple[int, np.ndarray, np.ndarray]:
    f = draw(st.integers(0, 3))
    return (f, *draw(matrices(min_n=2 * f + 3)))


@FAST
@given(krum_inputs())
def test_krum_matches_reference(data):
    f, u, w = data
    out = Krum(f).combine(u, w)
    chosen = np.flatnonzero(out.kept).tolist()
    assert len(chosen) == 1 and out.kept[chosen[0]] == 1
    np.testing.assert_array_equal(out.update, u[chosen[0]])  # the update is one of the inputs
    assert_lowest_scores(ref_krum_scores(u.tolist(), f), chosen, u)


@FAST
@given(krum_inputs(), st.data())
def test_multi_krum_matches_reference(data, draw):
    f, u, w = data
    selected = draw.draw(st.integers(1, len(u) - f))
    out = MultiKrum(f, selected).combine(u, w)
    chosen = np.flatnonzero(out.kept).tolist()
    assert len(chosen) == selected and np.all(out.kept[chosen] == 1)
    assert_lowest_scores(ref_krum_scores(u.tolist(), f), chosen, u)
    rows = u.tolist()
    check(out, [sum(rows[i][j] for i in chosen) / selected for j in range(u.shape[1])], out.kept.tolist())


@FAST
@given(matrices(), st.floats(0.1, 20), st.integers(1, 4), st.data())
def test_centered_clip_matches_reference_over_two_rounds(data, radius, iterations, draw):
    u, w = data
    second = draw.draw(hnp.arrays(np.float64, u.shape, elements=REALS))
    rule = CenteredClip(radius, iterations)
    center, kept = ref_centered_clip(u.tolist(), radius, iterations, [0.0] * u.shape[1])
    check(rule.combine(u, w), center, kept)
    check(rule.combine(second, w), *ref_centered_clip(second.tolist(), radius, iterations, center))


# ---- properties ----

def all_rules() -> list[RobustRule]:
    return [Mean(), NormBound(10.0), CoordinateMedian(), TrimmedMean(0.1), Krum(1), MultiKrum(1, 5),
            CenteredClip(10.0)]


@pytest.mark.parametrize("rule", all_rules()[1:], ids=lambda r: r.name)
def test_one_huge_outlier_drags_the_mean_but_not_the_robust_rules(rule):
    rng = np.random.default_rng(0)
    honest = rng.normal(size=20) + 0.01 * rng.normal(size=(10, 20))
    updates = np.vstack([honest, 1e6 * np.ones(20)])
    weights = np.ones(len(updates))
    target = honest.mean(axis=0)
    mean_error = np.linalg.norm(Mean().combine(updates, weights).update - target)
    assert mean_error > 1e4
    out = rule.combine(updates, weights)
    assert np.linalg.norm(out.update - target) < 1e-3 * mean_error
    assert out.kept[-1] < 1e-3


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.name)
def test_inputs_are_not_modified_and_not_aliased(rule):
    rng = np.random.default_rng(1)
    updates, weights = rng.normal(size=(7, 4)), rng.uniform(1, 2, size=7)
    before = updates.copy(), weights.copy()
    out = rule.combine(updates, weights)
    np.testing.assert_array_equal(updates, before[0])
    np.testing.assert_array_equal(weights, before[1])
    assert not np.shares_memory(out.update, updates)


def test_centered_clip_state_round_trip():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    weights = np.ones(5)
    rule = CenteredClip(0.5, iterations=2)
    assert rule.state_dict() == {}
    rule.combine(first, weights)
    state = rule.state_dict()
    fresh = CenteredClip(0.5, iterations=2)
    fresh.load_state_dict(state)
    state["center"][:] = 99.0  # the returned state is a copy
    expected = rule.combine(second, weights)
    np.testing.assert_array_equal(fresh.combine(second, weights).update, expected.update)
    rule.load_state_dict({})  # reset: the same as a new rule
    np.testing.assert_array_equal(rule.combine(first, weights).update, CenteredClip(0.5, 2).combine(first, weights).update)


def test_centered_clip_refuses_a_centre_of_another_length():
    rule = CenteredClip(1.0)
    rule.load_state_dict({"center": np.zeros(4)})
    with pytest.raises(ValueError, match="length 4"):
        rule.combine(np.ones((3, 5)), np.ones(3))
    with pytest.raises(ValueError, match="center"):
        rule.load_state_dict({"centre": np.zeros(5)})


def test_stateless_rules_refuse_state():
    Krum(0).load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        Krum(0).load_state_dict({"center": np.zeros(2)})


@pytest.mark.parametrize("rule, n, message", [
    (Krum(2), 6, r"Krum\(byzantine=2\) needs at least 7 inputs \(n >= 2f \+ 3\), got 6"),
    (MultiKrum(1, 5), 5, r"needs at least 6 inputs .*got 5"),
    (MultiKrum(2, 1), 6, r"needs at least 7 inputs"),
    (Mean(), 0, r"needs at least 1 inputs"),
])
def test_too_few_inputs(rule, n, message):
    with pytest.raises(ValueError, match=message):
        rule.combine(np.ones((n, 3)), np.ones(n))


@pytest.mark.parametrize("make", [
    lambda: NormBound(0), lambda: NormBound(-1.0), lambda: NormBound(math.nan), lambda: NormBound(math.inf),
    lambda: TrimmedMean(0.5), lambda: TrimmedMean(-0.1), lambda: TrimmedMean(math.nan),
    lambda: Krum(-1), lambda: Krum(1.5), lambda: Krum(True), lambda: MultiKrum(1, 0), lambda: MultiKrum(-1, 2),
    lambda: CenteredClip(0), lambda: CenteredClip(1.0, 0),
])
def test_bad_parameters(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("updates, weights, message", [
    (np.vstack([[1.0, math.nan], np.zeros((6, 2))]), np.ones(7), "NaN"),
    (np.vstack([[1.0, math.inf], np.zeros((6, 2))]), np.ones(7), "infinite"),
    (np.ones((7, 2)), np.ones(6), r"shape \(7,\)"),
    (np.ones((7, 2)), np.array([1.0, math.nan, 1, 1, 1, 1, 1]), "weights"),
    (np.ones((7, 2)), np.array([1.0, 0.0, 1, 1, 1, 1, 1]), "weights"),
    (np.ones(7), np.ones(7), "2-D"),
    (np.ones((7, 2, 1)), np.ones(7), "2-D"),
    (np.ones((7, 0)), np.ones(7), "d >= 1"),
])
@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.name)
def test_bad_inputs(rule, updates, weights, message):
    with pytest.raises(ValueError, match=message):
        rule.combine(updates, weights)
