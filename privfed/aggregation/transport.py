"""Moving a round's bytes between the server half and the client halves.

A :class:`Transport` delivers one batch of server messages and hands every reply to the server half; a client that
does not answer simply sends nothing, and the server half closes the stage without it. :func:`run_protocol` drives
a round to its end over any transport. :class:`InProcessTransport` is the one the simulation, the tests and the
notebooks use: the client halves live in this process, updates are asked for just before the input message, and
dropouts are simulated by stage; a network engine would be another transport, reusing the halves unchanged.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
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
    @abc.abstractmethod
    def exchange(self, server: ServerHalf, outgoing: dict[int, bytes]) -> None:
        """Deliver each message to its client and hand every reply to server.receive; a client that does not
        answer (dropout, refusal, ProtocolError) simply sends nothing."""


class InProcessTransport(Transport):
    """Client halves in this process, messages passed as bytes, dropouts simulated by stage.

    When the server half requests input, ``provide_update(c)`` gives client c's vector just before it is delivered
    its message (None: the client has nothing to send and leaves the round). ``dropouts`` maps a client to the
    stage from which it answers nothing. ``tap(sender, raw)`` sees every reply before the server does. ``left``
    records why each client left the round.
    """

    def __init__(self, clients: Mapping[int, ClientHalf], provide_update: Callable[[int], np.ndarray | None],
                 dropouts: Mapping[int, DropoutStage] | None = None,
                 tap: Callable[[int, bytes], None] | None = None):
        self.clients, self.provide_update = clients, provide_update
        self.dropouts = dropouts or {}
        self.tap = tap
        self.left: dict[int, str] = {}

    def exchange(self, server: ServerHalf, outgoing: dict[int, bytes]) -> None:
        stage, wants_input = server.stage, server.requests_input
        for cid, raw in outgoing.items():
            if cid in self.left:
                continue
            if gone_by(stage, self.dropouts.get(cid)):
                self.left[cid] = f"dropped at stage {stage.value}"
                continue
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
            if self.tap is not None:
                self.tap(cid, reply)
            try:
                server.receive(cid, reply)
            except ProtocolError as err:
                self.left[cid] = f"rejected by the server: {err}"


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
