"""The ``defence:`` section: robust aggregation rules, grouped secure aggregation, range checks and client
clipping."""
from __future__ import annotations

import enum
import math
import typing
from dataclasses import dataclass

from privfed.config.fields import check, described


class AggregationRule(enum.Enum):
    """How the server combines the updates it can read (each client's under plain; group sums when grouped)."""

    MEAN = "mean"  # FedAvg's weighted mean: no defence
    NORM_BOUND = "norm_bound"  # each input scaled to L2 norm <= defence.norm_bound, then the mean
    MEDIAN = "median"  # coordinate-wise median
    TRIMMED_MEAN = "trimmed_mean"  # coordinate-wise mean without the defence.trim_fraction extremes on each side
    KRUM = "krum"  # the input closest to its n - f - 2 neighbours
    MULTI_KRUM = "multi_krum"  # the mean of the defence.selected inputs with the best Krum scores
    CENTERED_CLIP = "centered_clip"  # iterative clipping around the previous round's aggregate


@dataclass(frozen=True)
class DefenceConfig:
    """How the server defends the aggregate. ``defence: median`` is short for ``defence: {rule: median}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "rule"

    rule: AggregationRule = described("mean | norm_bound | median | trimmed_mean | krum | multi_krum | centered_clip: "
                                      "robust rules need the individual inputs (plain) or groups",
                                      default=AggregationRule.MEAN)
    groups: int = described("0: the rule reads each client's update (plain only); g >= 2: grouped aggregation, each "
                            "of g random groups summed by aggregation.method, the rule combines the g group sums (the "
                            "server learns g partial sums instead of one)", default=0)
    min_group_size: int = described("grouped: the fewest clients a group may hold (>= 2 under secagg/paillier)",
                                    default=2)
    norm_bound: float = described("norm_bound: the L2 bound (0 = the median of the round's input norms)", default=0.0)
    trim_fraction: float = described("trimmed_mean: share of inputs cut at each end of every coordinate", default=0.2)
    byzantine: int = described("krum, multi_krum: f, the Byzantine inputs tolerated (needs n >= 2f + 3 inputs)",
                               default=1)
    selected: int = described("multi_krum: inputs averaged (0 = n - f)", default=0)
    clip_radius: float = described("centered_clip: the clipping radius (0 = the median distance to the centre)",
                                   default=0.0)
    clip_iterations: int = described("centered_clip: clipping iterations per round", default=3)
    range_check: bool = described("reject a decoded sum (or group sum) outside what honest encoded inputs can add up "
                                  "to: |coordinate| <= contributors x aggregation.clip_range", default=False)
    client_clip: float = described("honest client code clips its update to this L2 norm before upload (0 = off); "
                                   "trusts client code: malicious clients skip it", default=0.0)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.groups == 0 or self.groups >= 2, "defence.groups", f"must be 0 or >= 2, got {self.groups}")
        check(self.min_group_size >= 1, "defence.min_group_size", "must be >= 1")
        check(self.norm_bound >= 0 and math.isfinite(self.norm_bound), "defence.norm_bound",
              "must be finite and >= 0 (0 = the median input norm)")
        check(0.0 <= self.trim_fraction < 0.5, "defence.trim_fraction",
              f"must be in [0, 0.5), got {self.trim_fraction}")
        check(self.byzantine >= 0, "defence.byzantine", "must be >= 0")
        check(self.selected >= 0, "defence.selected", "must be >= 0 (0 = n - f)")
        check(self.clip_radius >= 0 and math.isfinite(self.clip_radius), "defence.clip_radius",
              "must be finite and >= 0 (0 = the median distance)")
        check(self.clip_iterations >= 1, "defence.clip_iterations", "must be >= 1")
        check(self.client_clip >= 0 and math.isfinite(self.client_clip), "defence.client_clip",
              "must be >= 0 (0 = off)")
