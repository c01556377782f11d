"""Between the secure sum and the server strategy: which inputs the server can read, which it rejects, and the
robust rule that combines the rest into the round's mean update.

What the server can read depends on the aggregation method, and so does what it can defend with:

* ``plain``: every client's upload (:class:`~privfed.federation.server_view.ServerView`), so any robust rule
  (norm bounding, median, trimmed mean, Krum, multi-Krum, centred clipping) applies to individual updates;
* ``secagg`` / ``paillier``: one decoded sum. No rule can look inside it; the server can only check that it lies
  within what honest encoded inputs can add up to (``defence.range_check``) and trust honest client code to clip
  (``defence.client_clip``, applied in :func:`~privfed.client.procedure.contribution`);
* grouped aggregation (``defence.groups = g``): the round's clients are split at random into g groups, each summed
  by its own run of the protocol; the rule combines the g group means. The server learns g partial sums instead
  of one — less privacy than one sum, which the results say — and an attacker is diluted in its group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privfed.aggregation.base import AggregationOutcome
from privfed.aggregation.robust import (
    CenteredClip,
    CoordinateMedian,
    Krum,
    Mean,
    MultiKrum,
    NormBound,
    RobustRule,
    TrimmedMean,
)
from privfed.config import Aggregation, AggregationRule, ExperimentConfig
from privfed.federation.server_view import ServerView
from privfed.federation.vectors import derive_seed

RANGE_TOLERANCE = 1e-6  # relative slack on the range check's bound (decoding is exact up to float rounding)


@dataclass(frozen=True)
class Combination:
    """What the server made of a round's inputs (a client's upload, a group sum, or the one secure sum)."""

    update: np.ndarray | None  # float32 mean update; None when every input was rejected
    inputs: tuple[tuple[int, ...], ...]  # each input's contributors
    kept: tuple[float, ...]  # each input's share of influence kept by the rule (0: rejected or excluded)
    rejected: tuple[str, ...]  # why each input was rejected ("" when it was not)
    rule: str
    reason: str = ""  # why there is no update, when there is none


def group_assignment(cfg: ExperimentConfig, round_idx: int, sampled: list[int]) -> list[list[int]]:
    """The round's groups: ``defence.groups`` random groups of near-equal size (from (seed, round)), or one group
    of every sampled client."""
    groups = cfg.defence.groups
    if groups < 2:
        return [sampled]
    order = np.random.default_rng(derive_seed(cfg.seed, round_idx, 0x6209)).permutation(sampled)
    return [sorted(int(c) for c in part) for part in np.array_split(order, groups)]


def make_rule(cfg: ExperimentConfig, means: np.ndarray, centre: np.ndarray | None) -> RobustRule:
    """The configured rule for this round's inputs (a bound or radius of 0 is the round's median norm)."""
    de = cfg.defence
    if de.rule is AggregationRule.NORM_BOUND:
        bound = de.norm_bound or _median_positive(np.linalg.norm(means, axis=1))
        return NormBound(bound)
    if de.rule is AggregationRule.MEDIAN:
        return CoordinateMedian()
    if de.rule is AggregationRule.TRIMMED_MEAN:
        return TrimmedMean(de.trim_fraction)
    if de.rule is AggregationRule.KRUM:
        return Krum(de.byzantine)
    if de.rule is AggregationRule.MULTI_KRUM:
        return MultiKrum(de.byzantine, de.selected or len(means) - de.byzantine)
    if de.rule is AggregationRule.CENTERED_CLIP:
        origin = np.zeros(means.shape[1]) if centre is None else centre
        rule = CenteredClip(de.clip_radius or _median_positive(np.linalg.norm(means - origin, axis=1)),
                            de.clip_iterations)
        if centre is not None:
            rule.load_state_dict({"center": centre})
        return rule
    return Mean()


def _median_positive(norms: np.ndarray) -> float:
    """The median norm, or 1 when every input is zero (any bound leaves zeros unchanged)."""
    median = float(np.median(norms))
    return median if median > 0 else 1.0


class UpdateCombiner:
    """Turns a round's aggregation outcome (and, under plain, the server's view) into the mean update."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.centre: np.ndarray | None = None  # centred clipping: the previous round's aggregate

    @property
    def reads_uploads(self) -> bool:
        """True when the rule combines individual uploads (plain, no groups): the driver must record them."""
        return self.cfg.defence.rule is not AggregationRule.MEAN and self.cfg.defence.groups == 0

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.centre is None else {"combiner_centre": self.centre}

    def load_state_dict(self, state: dict) -> None:
        self.centre = state.get("combiner_centre")

    def combine(self, outcome: AggregationOutcome, view: ServerView | None) -> Combination:
        """The mean update from ``outcome`` (whose total is not None)."""
        assert outcome.total is not None
        if outcome.groups:
            inputs = [(g.contributors, g.total) for g in outcome.groups if g.total is not None]
        elif self.reads_uploads:
            assert view is not None, "the driver records uploads when the rule reads them"
            inputs = [((c,), view.uploads[c].astype(np.float64)) for c in outcome.contributors]
        else:
            inputs = [(outcome.contributors, outcome.total)]
        rejected = [self._range_problem(members, total) for members, total in inputs]
        accepted = [i for i, why in enumerate(rejected) if not why]
        rule = self.cfg.defence.rule.value
        members = tuple(m for m, _ in inputs)
        kept = np.zeros(len(inputs))
        if not accepted:
            return Combination(None, members, tuple(kept), tuple(rejected), rule,
                               "every sum failed the range check: " + "; ".join(rejected))
        totals = np.stack([inputs[i][1] for i in accepted])
        if self.cfg.defence.rule is AggregationRule.MEAN:  # the sum's mean, exactly as without a defence
            total = totals[0] if len(accepted) == 1 else totals.sum(axis=0)
            kept[accepted] = 1.0
            update = total[:-1] / total[-1]
        else:
            weights = totals[:, -1]
            means = totals[:, :-1] / weights[:, None]
            robust = make_rule(self.cfg, means, self.centre)
            if len(means) < robust.min_inputs():  # dropouts, skips or aborted groups left too few
                return Combination(None, members, tuple(kept), tuple(rejected), rule,
                                   f"{len(means)} input(s) left, {rule} needs {robust.min_inputs()}")
            combined = robust.combine(means, weights)
            kept[accepted] = combined.kept
            update = combined.update
            if self.cfg.defence.rule is AggregationRule.CENTERED_CLIP:
                self.centre = update.copy()
        return Combination(update.astype(np.float32), members, tuple(float(k) for k in kept), tuple(rejected), rule)

    def _range_problem(self, members: tuple[int, ...], total: np.ndarray) -> str:
        """Why a sum of ``len(members)`` encoded inputs cannot come from honest clients ("" when it can): a
        coordinate beyond n x clip_range, or a total weight outside (0, n]."""
        if not self.cfg.defence.range_check:
            return ""
        n = len(members)
        bound = n * self.cfg.aggregation.clip_range * (1 + RANGE_TOLERANCE)
        worst = float(np.max(np.abs(total[:-1]))) if total.size > 1 else 0.0
        if not np.all(np.isfinite(total)) or worst > bound:
            return f"a coordinate of {worst:.4g} exceeds {n} x clip_range = {n * self.cfg.aggregation.clip_range:g}"
        if not 0 < total[-1] <= n * (1 + RANGE_TOLERANCE):
            return f"the total weight {total[-1]:.4g} lies outside (0, {n}]"
        return ""


DEFENDS_AGAINST: dict[AggregationRule, str] = {
    AggregationRule.MEAN: "nothing: every input counts in full",
    AggregationRule.NORM_BOUND: "boosted updates (model replacement, out-of-range values): no input moves the "
                                "mean by more than its share of the bound; a backdoor inside the bound survives",
    AggregationRule.MEDIAN: "a minority of arbitrary inputs, coordinate by coordinate",
    AggregationRule.TRIMMED_MEAN: "up to trim_fraction x n arbitrary inputs at each end of every coordinate",
    AggregationRule.KRUM: "up to f Byzantine inputs: keeps the one input closest to its neighbours",
    AggregationRule.MULTI_KRUM: "up to f Byzantine inputs: averages the inputs closest to their neighbours",
    AggregationRule.CENTERED_CLIP: "Byzantine inputs far from the previous aggregate: each input's pull is "
                                   "clipped to a radius around it",
}
RANGE_CHECK_DEFENDS = ("inputs written past the encoding (out_of_range) whose sum leaves n x clip_range; values "
                       "inside that bound pass undetected")
CLIENT_CLIP_DEFENDS = ("poisoned data fed to honest client code (label_flip, spread): trusts client code, so "
                       "malicious clients simply skip it")


def server_learns(cfg: ExperimentConfig) -> str:
    """What the aggregation lets the server see of each round, in words."""
    if cfg.defence.groups:
        return (f"{cfg.defence.groups} group sums of >= {cfg.defence.min_group_size} clients each "
                f"({cfg.aggregation.method.value} within each group)")
    if cfg.aggregation.method is Aggregation.PLAIN:
        return "every client's update"
    return f"one sum ({cfg.aggregation.method.value})"


def defence_summary(cfg: ExperimentConfig) -> dict:
    """results.json's ``defence``: the rule, what the server learns, and which threat each active defence meets."""
    de = cfg.defence
    defends = {de.rule.value: DEFENDS_AGAINST[de.rule]}
    if de.range_check:
        defends["range_check"] = RANGE_CHECK_DEFENDS
    if de.client_clip:
        defends["client_clip"] = CLIENT_CLIP_DEFENDS
    return {"rule": de.rule.value, "groups": de.groups, "range_check": de.range_check, "client_clip": de.client_clip,
            "server_learns": server_learns(cfg), "defends_against": defends}
