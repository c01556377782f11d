"""``aggregation: secagg``: SecAgg / SecAgg+ halves around the state machines of :mod:`privfed.secure.secagg`.

The client half encodes its update (an optional randomized Hadamard rotation, clip, stochastic rounding, an optional
Skellam noise share), and its
:class:`~privfed.secure.secagg.SecAggClient` masks the words once the routed shares arrive; keys are agreed and
shared before the update exists. The server half wraps a :class:`~privfed.secure.secagg.SecAggServer`, which only
ever receives masked bytes and keeps their running sum, then decodes the unmasked sum. The encoding's word size is
fixed by the back-end, before any round, for the largest round (``max_clients``): a configuration whose sum could
wrap around is a ConfigError then, not a wrong model later. With ``aggregation.rotation`` the update part of the
vector (not its weight, the last value) is rotated with signs drawn from the round's session id, which a client
knows once SETUP arrives; so a rotating client encodes then, and the server rotates the decoded sum back.
"""
from __future__ import annotations

import dataclasses
import os
import time

import msgpack
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfed.aggregation.base import (
    STATE_ERRORS,
    AggregationBackend,
    AggregationOutcome,
    ClientHalf,
    ServerHalf,
    saved_state,
)
from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.errors import ConfigError
from privfed.privacy.distributed import MAX_POISSON_MU, SkellamShare
from privfed.secure.encoding import (
    EncodingStats,
    FixedPointEncoding,
    UniformSource,
    exact_sum_bits,
    os_uniform,
    summarise,
)
from privfed.secure.graph import effective_degree, round_threshold
from privfed.secure.messages import SESSION_BYTES, MessageType, ProtocolError, decode
from privfed.secure.rotation import RandomizedHadamard, padded_length
from privfed.secure.secagg import (
    ClientStage,
    RoundAborted,
    RoundParameters,
    SecAggClient,
    SecAggServer,
    ServerStage,
)
from privfed.secure.wire import unpack

T = MessageType
# the server's stage (named by the reply it awaits) -> the message it sent, and the dropout stage of that batch
REQUEST = {ServerStage.ADVERTISE_KEYS: T.SETUP, ServerStage.SHARE_KEYS: T.PEER_KEYS,
           ServerStage.MASKED_INPUT: T.ROUTED_SHARES, ServerStage.CONSISTENCY: T.CONSISTENCY_REQUEST,
           ServerStage.UNMASK: T.UNMASK_REQUEST}
DROPOUT_STAGE = {ServerStage.ADVERTISE_KEYS: DropoutStage.ADVERTISE_KEYS,
                 ServerStage.SHARE_KEYS: DropoutStage.SHARE_KEYS, ServerStage.MASKED_INPUT: DropoutStage.MASKED_INPUT,
                 ServerStage.CONSISTENCY: DropoutStage.MASKED_INPUT,  # answered by those who drop at unmasking
                 ServerStage.UNMASK: DropoutStage.UNMASKING}


class SecAggClientHalf(ClientHalf):
    """Encodes the update at once; adds the noise share and hands the words to the state machine as soon as SETUP
    has said how many take part (the share depends on it), whichever comes first."""

    def __init__(self, backend: SecAggBackend, client: SecAggClient):
        self.backend, self.client = backend, client
        self.client_id = client.id
        self._vector: np.ndarray | None = None  # a rotating client's update, waiting for SETUP's session id
        self._ints: np.ndarray | None = None  # quantised, waiting for SETUP to add the noise share
        self.stats: EncodingStats | None = None
        self.encode_seconds = 0.0

    @property
    def bytes_sent(self) -> int:
        return self.client.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.client.bytes_received

    def set_update(self, vector: np.ndarray) -> None:
        if self.backend.rotates:
            self._vector = np.asarray(vector, dtype=np.float64)
            self._finish_encoding()
            return
        tick = time.perf_counter()
        ints, stats = self.backend.encoding.quantise_contribution(vector, self.backend.uniform)
        self.set_quantised(ints, stats, time.perf_counter() - tick)

    def set_quantised(self, ints: np.ndarray, stats: EncodingStats, encode_seconds: float = 0.0) -> None:
        """Signed integers in units of the encoding's step as this client's input (:meth:`set_update` after
        encoding; a simulated malicious client calls it with integers past the clip range)."""
        self._ints, self.stats, self.encode_seconds = ints, stats, encode_seconds
        self._finish_encoding()

    def _finish_encoding(self) -> None:
        """Rotation, noise share and words, once both the update and the round's session and participant count
        are known."""
        if self.client.stage is ClientStage.AWAIT_SETUP:
            return
        tick = time.perf_counter()
        if self._vector is not None:
            vector, self._vector = self._vector, None
            rotated = self.backend.rotation(self.client.params.session).rotate(vector[:-1])
            self._ints, self.stats = self.backend.encoding.quantise_contribution(np.append(rotated, vector[-1]),
                                                                                  self.backend.uniform)
        if self._ints is None:
            return
        ints, self._ints = self._ints, None
        share = self.backend.noise_share(len(self.client.params.participants))
        if share is not None:
            ints[:-1] += share.sample(ints.size - 1)  # the count coordinate stays exact
        self.client.set_words(self.backend.encoding.to_words(ints))
        self.encode_seconds += time.perf_counter() - tick

    def handle(self, raw: bytes) -> bytes:
        reply = self.client.handle(raw)
        self._finish_encoding()
        return reply

    def export_state(self) -> bytes:
        return msgpack.packb({"protocol": Aggregation.SECAGG.value, "client": self.client.export_state(),
                              "ints": None if self._ints is None else self._ints.tobytes(),
                              "vector": None if self._vector is None else self._vector.tobytes(),
                              "stats": None if self.stats is None else dataclasses.astuple(self.stats),
                              "encode_seconds": self.encode_seconds}, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes, backend: SecAggBackend) -> SecAggClientHalf:
        state = saved_state(blob, Aggregation.SECAGG)
        try:
            client_id = msgpack.unpackb(state["client"], raw=False, strict_map_key=False)["id"]
        except STATE_ERRORS as err:
            raise ProtocolError(f"not a saved secagg client state: {err}") from None
        identity, directory = backend.identity(client_id)
        half = cls(backend, SecAggClient.restore(state["client"], identity, directory))
        if state["ints"] is not None:
            half._ints = np.frombuffer(state["ints"], dtype=np.int64).copy()
        if state.get("vector") is not None:
            half._vector = np.frombuffer(state["vector"], dtype=np.float64).copy()
        half.stats = None if state["stats"] is None else EncodingStats(*state["stats"])
        half.encode_seconds = state["encode_seconds"]
        return half

    def report(self) -> dict:
        return {"stats": self.stats, "encode_seconds": self.encode_seconds, "crypto_seconds": self.client.timer.seconds}


class SecAggServerHalf(ServerHalf):
    """Routes the round through a :class:`SecAggServer` and decodes the unmasked sum; counts bytes as received."""

    def __init__(self, params: RoundParameters | None, encoding: FixedPointEncoding, details: dict,
                 share: SkellamShare | None, participants: list[int], rotation: RandomizedHadamard | None = None):
        self.started = time.perf_counter()
        self.encoding, self.details, self.share, self.rotation = encoding, details, share, rotation
        self.participants = participants
        self.server = None if params is None else SecAggServer(params)
        self.expected: set[int] = set()  # who was sent the current batch
        self.answered: set[int] = set()
        self.left: dict[int, str] = {}  # client -> the message it did not answer
        self.left_at: list[DropoutStage] = []
        self.received = dict.fromkeys(participants, 0)
        self.sent = dict.fromkeys(participants, 0)
        self.total: np.ndarray | None = None
        self.contributors: tuple[int, ...] = ()
        self.recovered: tuple[int, ...] = ()
        self.abort_reason: str | None = None

    def _batch(self, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        self.expected, self.answered = set(outgoing), set()
        for c, raw in outgoing.items():
            self.sent[c] += len(raw)
        return outgoing

    def open(self) -> dict[int, bytes]:
        self.started = time.perf_counter()
        if self.server is None:  # the "sum" of one client is its update: secure aggregation cannot hide it
            self.abort_reason = f"only {len(self.participants)} client(s) to sum; secagg needs 2 or more"
            return {}
        return self._batch(self.server.setup_messages())

    @property
    def requests_input(self) -> bool:
        return self.server is not None and self.server.stage is ServerStage.MASKED_INPUT

    @property
    def stage(self) -> DropoutStage:
        return DROPOUT_STAGE.get(self.server.stage, DropoutStage.UNMASKING)

    def receive(self, sender: int, raw: bytes) -> None:
        if sender not in self.received:
            raise ProtocolError(f"client {sender} is not part of this round")
        self.received[sender] += len(raw)
        self.server.receive(sender, raw)
        self.answered.add(sender)

    def advance(self) -> dict[int, bytes]:
        stage = self.server.stage
        silent = self.expected - self.answered
        for c in sorted(silent):
            self.left[c] = f"did not answer {REQUEST[stage].name}"
        if silent:
            self.left_at.append(DROPOUT_STAGE[stage])
        try:
            outgoing = self.server.advance()
            if not outgoing:
                result = self.server.result()
                total = self.encoding.decode_contribution_sum(self.encoding.decode_sum(result.total))
                if self.rotation is not None:
                    total = np.append(self.rotation.unrotate(total[:-1]), total[-1])
                self.total = total
                self.contributors, self.recovered = result.contributors, result.recovered_dropouts
        except (RoundAborted, ProtocolError) as err:
            self.abort_reason = str(err)
            return {}
        return self._batch(outgoing)

    def outcome(self) -> AggregationOutcome:
        n = len(self.participants)
        details = {**self.details, "dropouts": len(self.left),
                   "dropped_stage": self.left_at[0].value if self.left_at else None,
                   "dropouts_recovered": len(self.recovered), "left": {str(c): why for c, why in self.left.items()},
                   "server_crypto_seconds": 0.0 if self.server is None else self.server.timer.seconds,
                   "bytes_up_max": max(self.received.values(), default=0), "abort_reason": self.abort_reason}
        if self.server is None:
            return AggregationOutcome.aborted(self.abort_reason, self.started)
        return AggregationOutcome(total=self.total, contributors=self.contributors,
                                  bytes_up_per_client=sum(self.received.values()) // n,
                                  bytes_down_per_client=sum(self.sent.values()) // n,
                                  seconds=time.perf_counter() - self.started, details=details, noise=self.share,
                                  bytes_up_total=sum(self.received.values()),
                                  bytes_down_total=sum(self.sent.values()))

    def readable(self, raw: bytes) -> tuple[str, np.ndarray | None]:
        params = self.server.params
        try:
            message = decode(raw, max_bytes=self.server.max_bytes, session=params.session, round_idx=params.round)
        except ProtocolError:
            return "MALFORMED", None
        if message.type is not T.MASKED_INPUT:
            return message.type.name, None
        try:
            return message.type.name, unpack(message.body["vector"], params.word_bits, params.length)
        except ValueError:
            return "MALFORMED", None


class SecAggBackend(AggregationBackend):
    """SecAgg / SecAgg+ for rounds of up to ``max_clients``: the shared encoding, the noise share's size and the
    simulated PKI (one Ed25519 identity per client, made once, for the optional consistency check)."""

    client_type = SecAggClientHalf

    def __init__(self, cfg: AggregationConfig, max_clients: int, vector_length: int,
                 distributed_noise: float = 0.0, update_clip: float = 0.0, uniform: UniformSource = os_uniform):
        self.cfg = cfg
        self.uniform = uniform
        self.distributed_noise, self.update_clip = distributed_noise, update_clip
        self.vector_length, self.max_clients = vector_length, max_clients
        # on the wire: the update part, padded to a power of two when rotated, then the weight
        self.rotates = cfg.rotation and vector_length > 1
        self.wire_length = padded_length(vector_length - 1) + 1 if self.rotates else vector_length
        self.encoding = self._encoding()
        self.identities: dict[int, Ed25519PrivateKey] = {}
        self.directory: dict[int, bytes] = {}  # client -> its identity's public key, known to all

    @classmethod
    def for_run(cls, cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                distributed_noise: float, update_clip: float, progress: bool) -> SecAggBackend:
        return cls(cfg, max_clients, vector_length, distributed_noise, update_clip)

    def _encoding(self) -> FixedPointEncoding:
        """The encoding whose sum of ``max_clients`` inputs, noise shares included, cannot wrap.

        The noise share is counted in steps, so it depends on the step: finer values need more noise steps. With
        automatic value bits under a fixed word, the finest value bits whose values and share fit are chosen.
        """
        cfg, clients = self.cfg, self.max_clients
        if self.distributed_noise <= 0:
            return FixedPointEncoding.for_clients(cfg.clip_range, cfg.value_bits, clients, word_bits=cfg.word_bits)
        if cfg.value_bits or not cfg.word_bits:  # one candidate: the configured (or the automatic word's) bits
            first = FixedPointEncoding.for_clients(cfg.clip_range, cfg.value_bits, clients, word_bits=cfg.word_bits)
            share = self.noise_share(clients, first.step)
            share.check_sampleable()
            return FixedPointEncoding.for_clients(cfg.clip_range, first.value_bits, clients,
                                                  extra_bound=share.tail_bound(), word_bits=cfg.word_bits)
        for value_bits in range(cfg.word_bits - 1, 1, -1):
            candidate = FixedPointEncoding(cfg.clip_range, value_bits, cfg.word_bits)
            share = self.noise_share(clients, candidate.step)
            if share.client_mu <= MAX_POISSON_MU and \
                    exact_sum_bits(value_bits, clients, share.tail_bound()) <= cfg.word_bits:
                return candidate
        raise ConfigError("aggregation.word_bits", f"{cfg.word_bits} bits cannot hold the exact sum of {clients} "
                          f"clients' values plus their distributed-DP noise shares (noise multiplier "
                          f"{self.distributed_noise:g}, {self.wire_length - 1} noised values) at any value_bits; "
                          "raise word_bits")

    def noise_share(self, num_clients: int, step: float | None = None) -> SkellamShare | None:
        """The Skellam share each of a round's ``num_clients`` adds at the encoding's step (or ``step``; None
        without distributed DP)."""
        if self.distributed_noise <= 0:
            return None
        return SkellamShare(noise_multiplier=self.distributed_noise, update_clip=self.update_clip,
                            step=self.encoding.step if step is None else step, dimension=self.wire_length - 1,
                            min_clients=round_threshold(num_clients, self.cfg.neighbours, self.cfg.threshold))

    def identity(self, client_id: int) -> tuple[Ed25519PrivateKey | None, dict[int, bytes]]:
        """The client's identity key and the directory of public keys (None, {} without the consistency check)."""
        if not self.cfg.consistency_check:
            return None, {}
        if client_id not in self.identities:
            self.identities[client_id] = Ed25519PrivateKey.generate()
            self.directory[client_id] = self.identities[client_id].public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return self.identities[client_id], self.directory

    def server_half(self, round_idx: int, participants: list[int]) -> SecAggServerHalf:
        ids = sorted(participants)
        if len(ids) < 2:
            return SecAggServerHalf(None, self.encoding, {}, None, ids)
        for c in ids:  # every participant's identity is in the directory before anyone checks a signature
            self.identity(c)
        degree = effective_degree(len(ids), self.cfg.neighbours)
        params = RoundParameters(os.urandom(SESSION_BYTES), round_idx, tuple(ids), degree,
                                 round_threshold(len(ids), self.cfg.neighbours, self.cfg.threshold),
                                 self.encoding.word_bits, self.wire_length, self.cfg.consistency_check)
        details = {"protocol": "secagg+" if degree else "secagg", "clients": len(ids),
                   "neighbours": degree or len(ids) - 1, "threshold": params.threshold,
                   "word_bits": self.encoding.word_bits, "value_bits": self.encoding.value_bits,
                   "clip_range": self.encoding.clip_range, "step": self.encoding.step,
                   "rotation": self.rotates, "wire_values": self.wire_length,
                   "consistency_check": self.cfg.consistency_check}
        return SecAggServerHalf(params, self.encoding, details, self.noise_share(len(ids)), ids,
                                self.rotation(params.session) if self.rotates else None)

    def rotation(self, session: bytes) -> RandomizedHadamard:
        """The round's rotation of the update part: signs from its session id, which every party knows."""
        return RandomizedHadamard(self.vector_length - 1, session)

    def client_half(self, round_idx: int, client_id: int) -> SecAggClientHalf:
        return SecAggClientHalf(self, SecAggClient(client_id, round_idx, *self.identity(client_id)))

    def _client_details(self, reports: list[dict]) -> dict:
        if not reports:  # no client answered (over a network: every node left)
            return {}
        stats = [r["stats"] for r in reports if r["stats"] is not None]
        return {**(summarise(stats) if stats else {}),
                "encode_seconds": sum(r["encode_seconds"] for r in reports),
                "client_crypto_seconds": float(np.mean([r["crypto_seconds"] for r in reports]))}
