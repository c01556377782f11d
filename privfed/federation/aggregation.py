"""Summing client vectors, revealing only the sum: the interface every aggregation back-end implements.

The round loop calls ``aggregate`` with each surviving client's plaintext contribution and gets back only the sum
(or ``None`` when the round must abort). A back-end runs both sides: the client-side protection (nothing for
``plain``; masking for secure aggregation; encryption for Paillier) and the server-side combination, so the loop
never branches on which one is in use and never touches an individual protected vector.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np

from privfed.config import Aggregation


@dataclass(frozen=True)
class AggregationOutcome:
    total: np.ndarray | None  # None: the round aborted and the global model must stay as it is
    contributors: tuple[int, ...]
    bytes_up_per_client: int
    seconds: float
    details: dict = field(default_factory=dict)


class Aggregator(abc.ABC):
    @abc.abstractmethod
    def aggregate(self, round_idx: int, contributions: dict[int, np.ndarray]) -> AggregationOutcome:
        """Sum ``contributions`` (client id -> float vector) revealing only the sum to the server."""


class PlainAggregator(Aggregator):
    """No protection: the server receives each float32 vector and adds them (float64 accumulator)."""

    def aggregate(self, round_idx: int, contributions: dict[int, np.ndarray]) -> AggregationOutcome:
        start = time.perf_counter()
        total = np.zeros(next(iter(contributions.values())).shape, dtype=np.float64)
        for vector in contributions.values():
            total += vector
        size = total.size * np.dtype(np.float32).itemsize
        return AggregationOutcome(total=total, contributors=tuple(sorted(contributions)), bytes_up_per_client=size,
                                  seconds=time.perf_counter() - start)


AGGREGATORS: dict[Aggregation, type[Aggregator]] = {Aggregation.PLAIN: PlainAggregator}


def make_aggregator(kind: Aggregation) -> Aggregator:
    return AGGREGATORS[kind]()
