"""The halves of a secure sum, and the back-end that makes them: the interface every aggregation method implements.

A round is one :class:`ServerHalf` and one :class:`ClientHalf` per participant that talk only in bytes. The server
half opens the round with a batch of messages, takes the clients' replies, and closes each stage with
:meth:`ServerHalf.advance` until it returns no more messages; then :meth:`ServerHalf.outcome` is the sum (or why
there is none). How the bytes travel is a :class:`~privfed.aggregation.transport.Transport`'s business, so the same
halves run in process (simulation, tests, notebooks) and behind a network. Under secagg and paillier the server half
only ever receives bytes and folds them into running sums: it holds no individual update by construction.

An :class:`AggregationBackend` is made once per run: it fixes the encoding, the key material and the worker pools
for rounds of up to ``max_clients`` clients, and makes each round's halves. Its :meth:`~AggregationBackend.aggregate`
runs a whole round in process on given vectors (notebooks, tests); :meth:`AggregationBackend.run` is what the round
driver calls on every engine, over the engine's transport to the round's clients.
"""
from __future__ import annotations

import enum
import abc
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import msgpack
import numpy as np

from privfed.aggregation.transport import InProcessTransport, Transport, recording_tap, run_protocol
from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.privacy.distributed import DistributedDp, SkellamShare
from privfed.secure.encoding import EncodingStats
from privfed.secure.messages import ProtocolError

if TYPE_CHECKING:
    from privfed.federation.server_view import ServerView


STATE_ERRORS = (KeyError, ValueError, TypeError, msgpack.UnpackException)  # what a malformed saved state raises


def saved_state(blob: bytes, protocol: Aggregation) -> dict:
    """A client half's exported state, checked to be one of ``protocol``'s (ProtocolError otherwise)."""
    try:
        state = msgpack.unpackb(blob, raw=False)
        if not isinstance(state, dict) or state.get("protocol") != protocol.value:
            raise ValueError(f"a {state.get('protocol') if isinstance(state, dict) else type(state).__name__} state")
    except STATE_ERRORS as err:
        raise ProtocolError(f"not a saved {protocol.value} client state: {err}") from None
    return state


def pack_report(report: dict) -> bytes:
    """A client half's :meth:`ClientHalf.report` as bytes, for a client that reports from another process."""
    stats = report.get("stats")
    return msgpack.packb({**report, "stats": None if stats is None else dataclasses.astuple(stats)},
                         use_bin_type=True)


def unpack_report(blob: bytes) -> dict:
    """The inverse of :func:`pack_report` (ProtocolError on anything else)."""
    try:
        report = msgpack.unpackb(blob, raw=False)
        if not isinstance(report, dict):
            raise TypeError(f"a {type(report).__name__}")
        if report.get("stats") is not None:
            report["stats"] = EncodingStats(*report["stats"])
    except STATE_ERRORS as err:
        raise ProtocolError(f"not a client report: {err}") from None
    return report


@dataclass(frozen=True)
class GroupSum:
    """One group's own sum in grouped aggregation (see :mod:`privfed.aggregation.grouped`)."""

    members: tuple[int, ...]  # the group's participants
    contributors: tuple[int, ...]  # those whose input entered the group's sum
    total: np.ndarray | None  # None: the group's round aborted
    reason: str = ""  # why it aborted


@dataclass(frozen=True)
class AggregationOutcome:
    total: np.ndarray | None  # None: the round aborted and the global model must stay as it is
    contributors: tuple[int, ...]
    bytes_up_per_client: int  # mean over the round's participants (one that never uploaded counts 0)
    bytes_down_per_client: int  # protocol messages only (the model broadcast is counted by the round loop)
    seconds: float
    details: dict = field(default_factory=dict)
    noise: SkellamShare | None = None  # the distributed-DP share each contributor added, if any
    bytes_up_total: int = 0  # every protocol byte the clients sent the server this round (exact, for totals)
    bytes_down_total: int = 0  # every protocol byte the server sent the clients this round
    groups: tuple[GroupSum, ...] = ()  # grouped aggregation: each group's sum, all of which the server learns
    under_clip: float | None = None  # adaptive clipping: the noised count of contributors within the round's clip

    @classmethod
    def aborted(cls, reason: str, started: float, details: dict | None = None) -> AggregationOutcome:
        """A round that released nothing: the global model stays as it is, ``details["abort_reason"]`` says why."""
        return cls(None, (), 0, 0, time.perf_counter() - started, {**(details or {}), "abort_reason": reason})


class ClientHalf(abc.ABC):
    """One client's side of one round's secure sum. Lives where the client's update is."""

    client_id: int
    bytes_sent: int
    bytes_received: int

    @abc.abstractmethod
    def set_update(self, vector: np.ndarray) -> None:
        """The client's contribution (float64, length vector_length, last entry = its weight). Encodes it at once
        (clip, stochastic rounding, distributed-DP noise share, packing/encryption where applicable) and keeps no
        float copy — except a secagg client that rotates or adds distributed-DP noise, which holds it until SETUP
        names the round's rotation and clip norm."""

    @abc.abstractmethod
    def handle(self, raw: bytes) -> bytes:
        """A server message -> the reply; ProtocolError on anything wrong (the client then leaves the round)."""

    @abc.abstractmethod
    def export_state(self) -> bytes:
        """Everything needed to continue in another process (:meth:`restore` rebuilds the half from it). Long-term
        key material (identity keys, the Paillier key pair) is not included: the back-end supplies it."""

    @classmethod
    @abc.abstractmethod
    def restore(cls, blob: bytes, backend: AggregationBackend) -> ClientHalf:
        """The half :meth:`export_state` saved, continuing where it stopped; ProtocolError if ``blob`` is not one."""

    def noise_spent(self) -> SkellamShare | None:
        """The distributed-DP share this client's input carries, once that input has left it (the server may then
        decode a sum holding it): what the client's own ledger records. None without distributed DP."""
        return None

    @abc.abstractmethod
    def report(self) -> dict:
        """What only the client measured this round (encoding error, its crypto seconds), for
        :meth:`AggregationBackend.complete`; in a deployment this is the client's own telemetry."""


class ServerHalf(abc.ABC):
    """The server's side of one round. Holds running sums only, never an individual update (secagg/paillier)."""

    @abc.abstractmethod
    def open(self) -> dict[int, bytes]:
        """The first messages, client id -> bytes ({} when the round cannot even start; see :meth:`outcome`)."""

    @property
    @abc.abstractmethod
    def requests_input(self) -> bool:
        """True when the batch last returned by open()/advance() is the one whose replies carry the clients' inputs
        (a driver trains a client just before delivering it that message)."""

    @property
    @abc.abstractmethod
    def stage(self) -> DropoutStage:
        """The protocol stage of the batch last returned: a client simulated to drop at stage S answers no batch
        of stage S or later (see :data:`privfed.aggregation.transport.STAGE_ORDER`)."""

    @abc.abstractmethod
    def receive(self, sender: int, raw: bytes) -> None:
        """Take one client's reply to the current batch; ProtocolError if it does not belong."""

    @abc.abstractmethod
    def advance(self) -> dict[int, bytes]:
        """Close the stage (clients that did not reply are dropped) -> the next batch; {} when the round is over."""

    @abc.abstractmethod
    def outcome(self) -> AggregationOutcome:
        """The sum (float64) or an aborted outcome, with details; valid once :meth:`advance` has returned {}."""

    @abc.abstractmethod
    def readable(self, raw: bytes) -> tuple[str, np.ndarray | None]:
        """What the server can read in a client's message: its type name ("MALFORMED" if unparseable) and, for the
        message carrying the client's input, that input as the server sees it (else None). For a ServerView."""


class Side(enum.Enum):
    """Which halves of the protocol a back-end makes: both (the in-process engine, every client in this process),
    the server's (the server process of a network engine) or one client's (a node)."""

    BOTH = "both"
    SERVER = "server"
    CLIENT = "client"


class AggregationBackend(abc.ABC):
    """One per run: the encoding, key material, worker pools and sizing that every round's halves share. Usable as
    a context manager, which closes it."""

    client_type: ClassVar[type[ClientHalf]]  # the class of its client halves, whose ``restore`` rebuilds one
    cfg: AggregationConfig
    max_clients: int
    vector_length: int

    @classmethod
    @abc.abstractmethod
    def for_run(cls, cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                distributed: DistributedDp | None, progress: bool, side: Side) -> AggregationBackend:
        """The back-end for a run whose rounds have up to ``max_clients`` of the clients ``client_ids``, making the
        halves of ``side`` (what it may hold depends on it: a Paillier server never holds the private key)."""

    def __enter__(self) -> AggregationBackend:  # noqa: PYI034 (typing.Self needs Python 3.11; privfed supports 3.10)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def plan(self) -> str:
        """A line on what aggregation will cost per round, printed before the run starts ("" when negligible)."""
        return ""

    def prepare_round(self, round_idx: int, client_ids: list[int]) -> None:
        """Called before the round's clients train: a back-end may start client-side work that needs no update."""

    def close(self) -> None:
        """Release what the back-end holds (worker processes); called once the run ends, even after an error."""

    @abc.abstractmethod
    def server_half(self, round_idx: int, participants: list[int]) -> ServerHalf:
        """The server's side of round ``round_idx`` among ``participants`` (public material only)."""

    @abc.abstractmethod
    def client_half(self, round_idx: int, client_id: int) -> ClientHalf:
        """Client ``client_id``'s side of round ``round_idx``; it needs its update only when asked for its input."""

    def restore_client(self, blob: bytes) -> ClientHalf:
        """A client half from :meth:`ClientHalf.export_state`'s bytes, in this (or another) process."""
        return self.client_type.restore(blob, self)

    def complete(self, outcome: AggregationOutcome, reports: list[dict]) -> AggregationOutcome:
        """``outcome`` with what the clients measured (their :meth:`ClientHalf.report`, in client order) added to
        its details."""
        return replace(outcome, details={**outcome.details, **self._client_details(reports)})

    def _client_details(self, reports: list[dict]) -> dict:
        """The round's client reports -> detail fields (none for a back-end whose clients measure nothing)."""
        return {}

    def aggregate(self, round_idx: int, contributions: Mapping[int, np.ndarray],
                  dropouts: frozenset[int] = frozenset(), view: ServerView | None = None) -> AggregationOutcome:
        """Sum ``contributions`` (client id -> float vector), revealing only the sum to the server: the halves of
        one round, run in process over an :class:`~privfed.aggregation.transport.InProcessTransport`.

        ``dropouts``: clients that vanish during the round, at ``cfg.dropout_stage``. ``view``, if given, records
        every message the server receives and each client's upload as the server could read it. Refused before
        any vector is touched (ValueError): no inputs, more clients than the back-end was sized for (their sum
        could overflow the encoding), vectors of another length, a view already holding another round.
        """
        if not contributions:
            raise ValueError("no contributions to sum")
        if len(contributions) > self.max_clients:
            raise ValueError(f"{len(contributions)} clients in a round, but the back-end was sized for at most "
                             f"{self.max_clients}: their sum could overflow the encoding")
        wrong = {c: np.shape(v) for c, v in contributions.items() if np.shape(v) != (self.vector_length,)}
        if wrong:
            raise ValueError(f"every vector must have shape ({self.vector_length},); got {wrong}")
        if view is not None and view.messages:
            raise ValueError("this ServerView already holds a round; pass a fresh ServerView() to each round")
        clients = {c: self.client_half(round_idx, c) for c in sorted(contributions)}
        transport = InProcessTransport(clients, contributions.get)
        transport.simulate_dropouts(dropouts, self.cfg.dropout_stage)
        return self.run(round_idx, transport, view)

    def run(self, round_idx: int, transport: Transport, view: ServerView | None = None) -> AggregationOutcome:
        """Round ``round_idx``'s sum among ``transport.participants``, driven from this back-end's server half over
        ``transport`` (the engine's way to the clients; their updates are asked for just before their input
        message, so key agreement runs before anyone trains and an early dropout never trains). ``view``, if
        given, records every message the server receives. The outcome carries the clients' reports and the
        engine's details."""
        server = self.server_half(round_idx, transport.participants)
        if view is not None:
            transport.tap = recording_tap(view, server)
        outcome = run_protocol(server, transport)
        return self.complete(replace(outcome, details={**outcome.details, **transport.details()}),
                             transport.reports())
