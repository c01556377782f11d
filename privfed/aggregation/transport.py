"""Moving a round's bytes between the server half and the client halves.

A :class:`Transport` carries one round's messages to its participants, wherever they are: in this process
(:class:`InProcessTransport`: the in-process engine, the tests and the notebooks) or behind Flower (one node per
client). What every engine shares lives here once: a client that left the round stays gone, a simulated dropout
answers nothing from its stage on, every reply passes the tap before the server half takes it, and a reply the
server half rejects removes its sender. An engine only :meth:`~Transport.deliver`\\ s a batch and hands back the
replies. :func:`run_protocol` drives a round to its end over any transport.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from privfed.config import DropoutStage
from privfed.secure.messages import ProtocolError

if TYPE_CHECKING:
    from privfed.aggregation.base import AggregationOutcome, ClientHalf, ServerHalf
    from privfed.federation.server_view import ServerView

STAGE_ORDER = list(DropoutStage)  # a client dropping at stage S answers no batch of S or any later stage


def gone_by(stage: DropoutStage, dropping: DropoutStage | None) -> bool:
    """True when a client that drops at ``dropping`` (None: never) no longer answers a batch of ``stage``."""
    return dropping is not None and STAGE_ORDER.index(stage) >= STAGE_ORDER.index(dropping)


class Transport(abc.ABC):
    """One round's messages between the server half and ``participants`` (the clients the server half is made
    for). ``left`` records why each client left the round; ``skipped``, the participants whose own budget refused
    the round when their first message reached them (a node checks its ledger then; in process, clients that
    refuse never become participants)."""

    def __init__(self, participants: Iterable[int]):
        self.participants = sorted(participants)
        self.dropouts: dict[int, DropoutStage] = {}
        self.tap: Callable[[int, bytes], None] | None = None
        self.left: dict[int, str] = {}
        self.skipped: set[int] = set()

    def simulate_dropouts(self, clients: Iterable[int], stage: DropoutStage) -> None:
        """``clients`` answer nothing from ``stage`` on (``aggregation.dropout_fraction``'s simulated dropouts)."""
        self.dropouts = {c: stage for c in clients}

    def exchange(self, server: ServerHalf, outgoing: dict[int, bytes]) -> None:
        """Deliver each message to its client and hand every reply to ``server.receive``; a client that does not
        answer (dropout, refusal, ProtocolError) simply sends nothing and the server half closes the stage
        without it."""
        stage = server.stage
        batch = {}
        for cid, raw in outgoing.items():
            if cid in self.left:
                continue
            if gone_by(stage, self.dropouts.get(cid)):
                self.left[cid] = f"dropped at stage {stage.value} (simulated)"
                continue
            batch[cid] = raw
        for cid, reply in self.deliver(batch, server.requests_input):
            if self.tap is not None:
                self.tap(cid, reply)
            try:
                server.receive(cid, reply)
            except ProtocolError as err:
                self.left[cid] = f"rejected by the server: {err}"

    @abc.abstractmethod
    def deliver(self, batch: dict[int, bytes], wants_input: bool) -> Iterator[tuple[int, bytes]]:
        """Each message of ``batch`` to its client (``wants_input``: the message whose reply carries the client's
        input, so the client trains or evaluates first); yields (client, reply) in the batch's order. A client
        that answers nothing is entered in :attr:`left` with the reason."""

    def reports(self) -> list[dict]:
        """The clients' :meth:`~privfed.aggregation.base.ClientHalf.report`\\ s, in client order."""
        return []

    def details(self) -> dict:
        """What the engine adds to the round's aggregation details (over Flower: which node left and why)."""
        return {}


class InProcessTransport(Transport):
    """Client halves in this process, messages passed as bytes.

    When the server half requests input, ``provide_update(c)`` gives client c's vector just before it is delivered
    its message (None: the client has nothing to send and leaves the round). ``dropouts`` maps a client to the
    stage from which it answers nothing; ``tap(sender, raw)`` sees every reply before the server does.
    """

    def __init__(self, clients: Mapping[int, ClientHalf], provide_update: Callable[[int], np.ndarray | None],
                 dropouts: Mapping[int, DropoutStage] | None = None,
                 tap: Callable[[int, bytes], None] | None = None):
        super().__init__(clients)
        self.clients, self.provide_update = clients, provide_update
        self.dropouts, self.tap = dict(dropouts or {}), tap

    def deliver(self, batch: dict[int, bytes], wants_input: bool) -> Iterator[tuple[int, bytes]]:
        for cid, raw in batch.items():  # one client at a time: a reply reaches the server before the next trains
            client = self.clients[cid]
            try:
                if wants_input:
                    vector = self.provide_update(cid)
                    if vector is None:
                        self.left[cid] = "had no update to send"
                        continue
                    client.set_update(vector)
                reply = client.handle(raw)
            except ProtocolError as err:
                self.left[cid] = f"refused: {err}"
                continue
            yield cid, reply

    def reports(self) -> list[dict]:
        return [self.clients[c].report() for c in sorted(self.clients)]


def run_protocol(server: ServerHalf, transport: Transport) -> AggregationOutcome:
    """open -> exchange -> advance until done -> outcome."""
    outgoing = server.open()
    while outgoing:
        transport.exchange(server, outgoing)
        outgoing = server.advance()
    return server.outcome()


def recording_tap(view: ServerView, server: ServerHalf) -> Callable[[int, bytes], None]:
    """A tap that files each client message in ``view``: its type, size and the input the server could read."""

    def tap(sender: int, raw: bytes) -> None:
        kind, upload = server.readable(raw)
        view.record(sender, kind, len(raw), upload)

    return tap
