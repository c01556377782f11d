"""Grouped secure aggregation: a round's clients in g disjoint groups, each group summed by its own run of the
aggregation protocol, so a robust rule can combine g group sums where one secure sum would allow none.

The price is privacy: the server learns g partial sums instead of one (each over at least
``defence.min_group_size`` clients), and every group must still be large enough for the protocol to hide its
members. :func:`merged_outcome` reports the groups' sums together with their total (what one sum would have given)
and says, in its details, what the server learned.
"""
from __future__ import annotations

import time

import numpy as np

from privfed.aggregation.base import AggregationOutcome, GroupSum


def merged_outcome(groups: list[list[int]], outcomes: list[AggregationOutcome | None]) -> AggregationOutcome | None:
    """One round's outcome from its groups' (None: nobody in that group trained); None when no group ran."""
    ran = [(members, o) for members, o in zip(groups, outcomes, strict=True) if o is not None]
    if not ran:
        return None
    sums = tuple(GroupSum(tuple(members), o.contributors if o.total is not None else (), o.total,
                          o.details.get("abort_reason") or "") for members, o in ran)
    totals = [g.total for g in sums if g.total is not None]
    participants = sum(len(members) for members, _ in ran)
    up, down = sum(o.bytes_up_total for _, o in ran), sum(o.bytes_down_total for _, o in ran)
    first = ran[0][1].details
    details = {**{k: first[k] for k in ("protocol", "word_bits", "value_bits", "clip_range") if k in first},
               "groups": len(groups), "group_sizes": [len(m) for m in groups],
               "groups_aborted": sum(g.total is None for g in sums),
               "dropouts": sum(o.details.get("dropouts", 0) for _, o in ran),
               "server_learns": f"{len(totals)} group sums (grouped aggregation), not one sum"}
    if not totals:
        return AggregationOutcome.aborted("every group's sum aborted: " + "; ".join(g.reason for g in sums),
                                          time.perf_counter(), details)
    return AggregationOutcome(total=np.sum(totals, axis=0),
                              contributors=tuple(sorted(c for g in sums for c in g.contributors)),
                              bytes_up_per_client=up // max(participants, 1),
                              bytes_down_per_client=down // max(participants, 1),
                              seconds=sum(o.seconds for _, o in ran), details=details,
                              bytes_up_total=up, bytes_down_total=down, groups=sums)
