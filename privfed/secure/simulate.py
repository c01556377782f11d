"""Run one SecAgg round in process: route every message as bytes between the state machines, with dropouts.

This is the transport of the simulation (and of the tests and the benchmark); a network engine would replace it
and reuse the client and server objects unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from privfed.config import DropoutStage
from privfed.secure.messages import MessageType, ProtocolError, decode
from privfed.secure.secagg import SecAggClient, SecAggServer, ServerOutcome

T = MessageType
# the server message a client dropping at a stage never answers (nor anything after it)
UNANSWERED = {DropoutStage.ADVERTISE_KEYS: T.SETUP, DropoutStage.SHARE_KEYS: T.PEER_KEYS,
              DropoutStage.MASKED_INPUT: T.ROUTED_SHARES, DropoutStage.UNMASKING: T.UNMASK_REQUEST}


@dataclass
class RoundLog:
    dropped: dict[int, str] = field(default_factory=dict)  # client -> why it left the round


def batch_type(batch: Mapping[int, bytes], server: SecAggServer) -> MessageType:
    """The type of a batch from the server: one stage's messages, all of one type, so one parse tells it."""
    params = server.params
    return decode(next(iter(batch.values())), max_bytes=server.max_bytes, session=params.session,
                  round_idx=params.round).type


def run_round(server: SecAggServer, clients: Mapping[int, SecAggClient],
              dropouts: Mapping[int, DropoutStage] | None = None,
              tap: Callable[[int, bytes], None] | None = None) -> tuple[ServerOutcome, RoundLog]:
    """Drive the round to its end. RoundAborted propagates; a client that refuses a message leaves the round.

    ``tap(sender, raw)`` sees every message a client sends the server, before the server does.
    """
    dropouts = dropouts or {}
    log = RoundLog()
    gone: set[int] = set()
    outgoing = server.setup_messages()
    while outgoing:
        kind = batch_type(outgoing, server)
        for cid, raw in outgoing.items():
            if cid in gone:
                continue
            stage = dropouts.get(cid)
            if stage is not None and kind >= UNANSWERED[stage]:
                gone.add(cid)
                log.dropped[cid] = f"dropped before answering {kind.name}"
                continue
            try:
                reply = clients[cid].handle(raw)
                if tap is not None:
                    tap(cid, reply)
                server.receive(cid, reply)
            except ProtocolError as err:
                gone.add(cid)
                log.dropped[cid] = f"refused: {err}"
        outgoing = server.advance()
    return server.result(), log
