"""An append-only ledger of privacy-relevant events: "what happened" as data, counted later by an accountant.

Compatibility contract (as in Google's dp_accounting): event types are never removed and new fields are optional,
so every ledger.jsonl written by an earlier privfed can be re-counted by a later one.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DpSgdEvent:
    """``steps`` Poisson-sampled Gaussian DP-SGD steps one client took in one round."""

    client: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    kind: str = "dp_sgd"


@dataclass(frozen=True, slots=True)
class SkippedEvent:
    """A sampled client that did not train because the round would have exceeded its budget."""

    client: int
    round: int
    epsilon_if_trained: float
    budget: float
    kind: str = "skipped_budget"


@dataclass(frozen=True, slots=True)
class DistributedDpEvent:
    """A client's update entered a secure sum with its Skellam noise share (user-level distributed DP).

    ``total_mu`` is the noise guaranteed in any completed sum (the threshold's worth of shares), in encoding steps;
    the sensitivities are those of everything the client added in integers: its clipped update and, with adaptive
    clipping, its bit.
    """

    client: int
    round: int
    noise_multiplier: float
    update_clip: float
    step: float
    dimension: int
    min_clients: int
    total_mu: float
    l2_sensitivity: float
    l1_sensitivity: float
    count_steps: int = 0  # adaptive clipping: the steps of the client's 'under the clip' bit (in the sensitivities)
    kind: str = "distributed_dp"


Event = DpSgdEvent | SkippedEvent | DistributedDpEvent
_KINDS = {"dp_sgd": DpSgdEvent, "skipped_budget": SkippedEvent, "distributed_dp": DistributedDpEvent}


class Ledger:
    """Ordered events of a run. Only appended to; serialised as one JSON object a line."""

    def __init__(self, events: Iterable[Event] = ()):
        self._events: list[Event] = []
        self._by_client: dict[int, list[Event]] = {}  # per-client look-ups stay cheap with thousands of clients
        for event in events:
            self.append(event)

    def append(self, event: Event) -> None:
        self._events.append(event)
        self._by_client.setdefault(event.client, []).append(event)

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    def _of(self, client: int | None) -> list[Event]:
        return self._events if client is None else self._by_client.get(client, [])

    def dp_sgd(self, client: int | None = None) -> list[DpSgdEvent]:
        return [e for e in self._of(client) if isinstance(e, DpSgdEvent)]

    def distributed_dp(self, client: int | None = None) -> list[DistributedDpEvent]:
        return [e for e in self._of(client) if isinstance(e, DistributedDpEvent)]

    @classmethod
    def from_dicts(cls, raws: Iterable[dict]) -> Ledger:
        """The inverse of :meth:`to_dicts`."""
        return cls(_KINDS[raw["kind"]](**raw) for raw in raws)

    def to_dicts(self) -> list[dict]:
        return [asdict(e) for e in self._events]

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e) + "\n" for e in self.to_dicts())

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_jsonl())
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Ledger:
        return cls.from_dicts(json.loads(line) for line in path.read_text().splitlines() if line.strip())
