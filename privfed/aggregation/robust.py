"""Robust aggregation rules: combine per-client (or per-group) mean updates into one update that few bad inputs cannot steer.

Plain FedAvg (:class:`Mean`) follows any single input as far as it likes: one client sending a huge or crafted update
moves the global model wherever it wants. The rules here bound that influence:

* :class:`NormBound` caps each update's L2 norm, so a boosted (scaled-up) backdoor update counts no more than an
  honest one of the bound's size.
* :class:`CoordinateMedian` and :class:`TrimmedMean` take, coordinate by coordinate, the middle of the inputs, so a
  minority of arbitrary (Byzantine) inputs cannot push any coordinate outside the honest inputs' range.
* :class:`Krum` and :class:`MultiKrum` keep the input(s) closest to their nearest neighbours, discarding outliers
  whole; they tolerate ``f`` Byzantine inputs out of ``n >= 2f + 3``.
* :class:`CenteredClip` clips every input around a centre carried over from the last round, so each input moves the
  result by at most a fixed radius however far away it is.

Every rule reads the individual inputs: it needs each client's (or each group's) update in the clear. Secure
aggregation reveals only the sum, so on its own it cannot feed these rules; combining the two needs per-group secure
sums whose group means are then combined here. The robust rules (all but :class:`Mean` and :class:`NormBound`) treat
inputs as equals and ignore the FedAvg weights, because a malicious client could lie about its weight (its number of
examples) to gain influence.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Combined:
    """What a rule made of its inputs."""

    update: np.ndarray  # float64, shape (d,)
    kept: np.ndarray  # float64, shape (n,): the share of each input's influence the rule kept, each in [0, 1]


def _positive_float(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _int_at_least(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _clip_factors(norms: np.ndarray, limit: float) -> np.ndarray:
    """min(1, limit / norm) per norm; 1 for a zero norm."""
    factors = np.ones_like(norms)
    np.divide(limit, norms, out=factors, where=norms > limit)
    return factors


class RobustRule(abc.ABC):
    """Combines n input updates of length d (rows of an (n, d) array) into one update of length d."""

    name: str
    _needs: str = ""  # why min_inputs() is what it is, for the error message

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def min_inputs(self) -> int:
        """The fewest inputs the rule works with."""
        return 1

    @abc.abstractmethod
    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        """Combine ``updates`` (n, d) with FedAvg ``weights`` (n,) into one update; inputs are not modified."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """What the rule carries between rounds (nothing, unless it says otherwise)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; a stateless rule accepts only an empty dict."""
        if state:
            raise ValueError(f"{self!r} keeps no state, got keys {sorted(state)}")

    def _checked(self, updates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``updates`` and ``weights`` as float64 arrays, or ValueError saying what is wrong with them."""
        u = np.asarray(updates, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] == 0:
            raise ValueError(f"updates must be a 2-D array (n, d) with d >= 1, got shape {u.shape}")
        n = u.shape[0]
        if n < self.min_inputs():
            raise ValueError(f"{self!r} needs at least {self.min_inputs()} inputs{self._needs}, got {n}")
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},) to match {n} updates, got shape {w.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("updates contain NaN or infinite values")
        if not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError("weights must be finite and > 0")
        return u, w


class Mean(RobustRule):
    """FedAvg's weighted mean, sum(w_i u_i) / sum(w_i): no defence at all, the baseline the other rules improve on."""

    name = "mean"

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, w = self._checked(updates, weights)
        return Combined(update=w @ u / w.sum(), kept=np.ones(len(u)))


class NormBound(RobustRule):
    """Weighted mean of the updates, each first scaled down to L2 norm at most ``bound``.

    Sun et al. 2019, "Can you really backdoor federated learning?": norm bounding defeats boosted (model-replacement)
    backdoors, whose updates must be large to survive averaging. Unlike the rules below it keeps the FedAvg weights,
    so it bounds each update's size but not a client that lies about its weight.
    """

    name = "norm_bound"

    def __init__(self, bound: float) -> None:
        self.bound = _positive_float("bound", bound)

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, w = self._checked(updates, weights)
        factors = _clip_factors(np.linalg.norm(u, axis=1), self.bound)
        return Combined(update=(w * factors) @ u / w.sum(), kept=factors)


def _middle_mean(u: np.ndarray, low: int, high: int) -> Combined:
    """Per coordinate, the unweighted mean of the sorted positions low..high-1 (stable sort: ties by input index)."""
    n, d = u.shape
    rows = np.argsort(u, axis=0, kind="stable")[low:high]
    middle = np.take_along_axis(u, rows, axis=0)
    update = np.clip(middle.mean(axis=0), middle[0], middle[-1])  # rounding can put a mean of equal values past them
    return Combined(update=update, kept=np.bincount(rows.ravel(), minlength=n) / d)


class CoordinateMedian(RobustRule):
    """Per-coordinate median (Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal statistical rates").

    Each coordinate ends within the range of the honest inputs' values as long as fewer than half of the inputs are
    Byzantine. Inputs count as equals (the FedAvg weights are ignored: a malicious client could lie about its weight).
    kept: the fraction of coordinates at which an input is (one of) the middle value(s).
    """

    name = "median"

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, _ = self._checked(updates, weights)
        n = len(u)
        return _middle_mean(u, (n - 1) // 2, n // 2 + 1)


class TrimmedMean(RobustRule):
    """Per-coordinate mean after dropping the k = floor(trim_fraction * n) smallest and k largest values.

    Yin et al. 2018: tolerates up to k Byzantine inputs per coordinate while averaging more of the honest values than
    the median does. Inputs count as equals (the FedAvg weights are ignored: a malicious client could lie about its
    weight). kept: the fraction of coordinates at which an input was not dropped.
    """

    name = "trimmed_mean"

    def __init__(self, trim_fraction: float) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
        self.trim_fraction = float(trim_fraction)

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, _ = self._checked(updates, weights)
        n = len(u)
        k = math.floor(self.trim_fraction * n)  # trim_fraction < 0.5 makes k < n / 2, so n - 2k >= 1 values remain
        return _middle_mean(u, k, n - k)


def _krum_scores(u: np.ndarray, byzantine: int) -> np.ndarray:
    """Per input, the sum of squared L2 distances to its n - f - 2 nearest other inputs."""
    sq = np.einsum("ij,ij->i", u, u)
    dist = sq[:, None] + sq[None, :] - 2.0 * (u @ u.T)  # Gram trick: O(n^2 d) in one matrix product
    np.maximum(dist, 0.0, out=dist)  # rounding can leave tiny negatives
    np.fill_diagonal(dist, np.inf)  # an input is not its own neighbour
    return np.sort(dist, axis=1)[:, : len(u) - byzantine - 2].sum(axis=1)


class Krum(RobustRule):
    """The one input closest (in summed squared distance) to its n - f - 2 nearest neighbours.

    Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant gradient descent": with at most f
    Byzantine inputs out of n >= 2f + 3 the chosen input is near the honest ones. Inputs count as equals (the FedAvg
    weights are ignored: a malicious client could lie about its weight). Ties go to the lowest index.
    """

    name = "krum"
    _needs = " (n >= 2f + 3)"

    def __init__(self, byzantine: int) -> None:
        self.byzantine = _int_at_least("byzantine", byzantine, 0)

    def min_inputs(self) -> int:
        return 2 * self.byzantine + 3

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, _ = self._checked(updates, weights)
        best = int(np.argmin(_krum_scores(u, self.byzantine)))
        kept = np.zeros(len(u))
        kept[best] = 1.0
        return Combined(update=u[best].copy(), kept=kept)


class MultiKrum(RobustRule):
    """Unweighted mean of the ``selected`` inputs with the lowest Krum scores (scored once, as Flower does).

    Blanchard et al. 2017: averages several well-placed inputs, for lower variance than Krum's single pick. Inputs
    count as equals (the FedAvg weights are ignored: a malicious client could lie about its weight). Ties go to the
    lowest index.
    """

    name = "multi_krum"
    _needs = " (n >= 2f + 3 and n >= f + selected)"

    def __init__(self, byzantine: int, selected: int) -> None:
        self.byzantine = _int_at_least("byzantine", byzantine, 0)
        self.selected = _int_at_least("selected", selected, 1)

    def min_inputs(self) -> int:
        return max(2 * self.byzantine + 3, self.byzantine + self.selected)

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, _ = self._checked(updates, weights)
        chosen = np.argsort(_krum_scores(u, self.byzantine), kind="stable")[: self.selected]
        kept = np.zeros(len(u))
        kept[chosen] = 1.0
        return Combined(update=u[chosen].mean(axis=0), kept=kept)


class CenteredClip(RobustRule):
    """Iterative clipping around a centre: v <- v + mean_i((u_i - v) * min(1, radius / ||u_i - v||)).

    Karimireddy, He & Jaggi 2021, "Learning from History for Byzantine Robust Optimization": each input moves the
    result by at most radius / n per iteration however far away it is. The centre starts at zero and then carries
    over: each round starts from the last round's result (the paper's momentum analogue). Inputs count as equals (the
    FedAvg weights are ignored: a malicious client could lie about its weight). kept: each input's clip factor in the
    last iteration.
    """

    name = "centered_clip"

    def __init__(self, radius: float, iterations: int = 3) -> None:
        self.radius = _positive_float("radius", radius)
        self.iterations = _int_at_least("iterations", iterations, 1)
        self._center: np.ndarray | None = None

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> Combined:
        u, _ = self._checked(updates, weights)
        n, d = u.shape
        if self._center is not None and len(self._center) != d:
            raise ValueError(f"{self!r} has a centre of length {len(self._center)} but the updates have length {d}")
        center = np.zeros(d) if self._center is None else self._center
        for _ in range(self.iterations):
            diff = u - center
            factors = _clip_factors(np.linalg.norm(diff, axis=1), self.radius)
            center = center + factors @ diff / n
        self._center = center
        return Combined(update=center.copy(), kept=factors)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self._center is None else {"center": self._center.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a centre from :meth:`state_dict`; a dict without "center" resets it (the next round starts at 0)."""
        if set(state) - {"center"}:
            raise ValueError(f"{self!r} keeps only 'center', got keys {sorted(state)}")
        center = state.get("center")
        if center is not None:
            center = np.array(center, dtype=np.float64)
            if center.ndim != 1 or not np.all(np.isfinite(center)):
                raise ValueError(f"center must be a finite 1-D array, got shape {center.shape}")
        self._center = center


__all__ = ["CenteredClip", "Combined", "CoordinateMedian", "Krum", "Mean", "MultiKrum", "NormBound", "RobustRule",
           "TrimmedMean"]
