"""Mean and 95 % confidence interval over seeds (Student t), the way every table and plot of privfed reports a cell."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its Student-t interval (nan for one value: no interval)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
        xs = [float(v) for v in values]
        if not xs:
            raise ValueError("an interval needs at least one value")
        n = len(xs)
        mean = math.fsum(xs) / n
        if n == 1 or not all(math.isfinite(x) for x in xs):
            return cls(mean, math.nan, n)
        from scipy import stats

        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
        return cls(mean, float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n), n)

    @property
    def low(self) -> float:
        return self.mean - (0.0 if math.isnan(self.half_width) else self.half_width)

    @property
    def high(self) -> float:
        return self.mean + (0.0 if math.isnan(self.half_width) else self.half_width)

    def text(self, digits: int = 3) -> str:
        """``0.912 ± 0.014`` (``∞`` for an infinite mean; the mean alone for one value)."""
        if math.isinf(self.mean):
            return "∞"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n}
