"""``aggregation: plain``: no protection. Each client sends its update as float32 bytes; the server adds them.

There is no session and no envelope: the server's request is empty and the reply is the vector's
``4 * vector_length`` bytes, exactly what an unprotected upload costs. A client dropping before it uploads
(any stage before ``unmasking``) is left out; one dropping after (``unmasking``) still counts.
"""
from __future__ import annotations

import time

import msgpack
import numpy as np

from privfed.aggregation.base import (
    STATE_ERRORS,
    AggregationBackend,
    AggregationOutcome,
    ClientHalf,
    ServerHalf,
    Side,
    saved_state,
)
from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.privacy.distributed import DistributedDp
from privfed.secure.messages import ProtocolError

REQUEST = b""  # "send your update": plain needs nothing more
FLOAT32 = np.dtype("<f4")


class PlainClient(ClientHalf):
    """Holds the float32 bytes of its update until asked for them."""

    def __init__(self, client_id: int, vector_length: int, payload: bytes | None = None):
        self.client_id, self.vector_length = client_id, vector_length
        self.payload = payload
        self.bytes_sent = self.bytes_received = 0

    def set_update(self, vector: np.ndarray) -> None:
        self.payload = np.asarray(vector, dtype=FLOAT32).tobytes()  # what travels is float32

    def handle(self, raw: bytes) -> bytes:
        if raw != REQUEST:
            raise ProtocolError(f"client {self.client_id}: plain expects an empty request, got {len(raw)} bytes")
        if self.payload is None:
            raise ProtocolError(f"client {self.client_id}: asked for its update, but it has none")
        reply, self.payload = self.payload, None
        self.bytes_sent += len(reply)
        return reply

    def export_state(self) -> bytes:
        return msgpack.packb({"protocol": Aggregation.PLAIN.value, "id": self.client_id, "payload": self.payload,
                              "bytes_sent": self.bytes_sent}, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes, backend: AggregationBackend) -> PlainClient:
        state = saved_state(blob, Aggregation.PLAIN)
        try:
            client = cls(state["id"], backend.vector_length, state["payload"])
            client.bytes_sent = state["bytes_sent"]
        except STATE_ERRORS as err:
            raise ProtocolError(f"not a saved plain client state: {err}") from None
        return client

    def report(self) -> dict:
        return {}


class PlainServer(ServerHalf):
    """Asks every participant for its update and adds each arriving float32 vector into a float64 total."""

    def __init__(self, participants: list[int], vector_length: int):
        self.participants, self.vector_length = participants, vector_length
        self.size = vector_length * FLOAT32.itemsize
        self.total = np.zeros(vector_length, dtype=np.float64)
        self.arrived: list[int] = []
        self.started = time.perf_counter()

    def open(self) -> dict[int, bytes]:
        self.started = time.perf_counter()
        return dict.fromkeys(self.participants, REQUEST)

    @property
    def requests_input(self) -> bool:
        return True

    @property
    def stage(self) -> DropoutStage:
        return DropoutStage.MASKED_INPUT

    def receive(self, sender: int, raw: bytes) -> None:
        if sender not in self.participants or sender in self.arrived:
            raise ProtocolError(f"an update from client {sender}, which is not (or no longer) expected")
        if len(raw) != self.size:
            raise ProtocolError(f"client {sender}'s update has {len(raw)} bytes, expected {self.size}")
        self.total += np.frombuffer(raw, dtype=FLOAT32)
        self.arrived.append(sender)

    def advance(self) -> dict[int, bytes]:
        return {}

    def outcome(self) -> AggregationOutcome:
        if not self.arrived:
            return AggregationOutcome.aborted("every client dropped before uploading", self.started)
        return AggregationOutcome(total=self.total, contributors=tuple(sorted(self.arrived)),
                                  bytes_up_per_client=self.size * len(self.arrived) // len(self.participants),
                                  bytes_down_per_client=0, seconds=time.perf_counter() - self.started,
                                  details={"dropouts": len(self.participants) - len(self.arrived)},
                                  bytes_up_total=self.size * len(self.arrived))

    def readable(self, raw: bytes) -> tuple[str, np.ndarray | None]:
        if len(raw) != self.size:
            return "MALFORMED", None
        return "PLAIN_UPDATE", np.frombuffer(raw, dtype=FLOAT32).astype(np.float32)


class PlainBackend(AggregationBackend):
    """No protection: the server receives each float32 vector and adds them (float64 accumulator)."""

    client_type = PlainClient

    def __init__(self, cfg: AggregationConfig, max_clients: int, vector_length: int):
        self.cfg, self.max_clients, self.vector_length = cfg, max_clients, vector_length

    @classmethod
    def for_run(cls, cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                distributed: DistributedDp | None, progress: bool, side: Side) -> PlainBackend:
        return cls(cfg, max_clients, vector_length)

    def server_half(self, round_idx: int, participants: list[int]) -> PlainServer:
        return PlainServer(sorted(participants), self.vector_length)

    def client_half(self, round_idx: int, client_id: int) -> PlainClient:
        return PlainClient(client_id, self.vector_length)
