"""``aggregation: secagg``: SecAgg / SecAgg+ halves around the state machines of :mod:`privfed.secure.secagg`.

The client half encodes its update (distributed DP's clip to the round's norm and its 'under the clip' bit, an
optional randomized Hadamard rotation, clip to the range, stochastic rounding, a Skellam noise share), and its
:class:`~privfed.secure.secagg.SecAggClient` masks the words once the routed shares arrive; keys are agreed and
shared before the update exists. The server half wraps a :class:`~privfed.secure.secagg.SecAggServer`, which only
ever receives masked bytes and keeps their running sum, then decodes the unmasked sum. The encoding's word size is
fixed by the back-end, before any round, for the largest round (``max_clients``): a configuration whose exact sum
could wrap around, or whose noisy sum could with more than ``aggregation.max_wrap_probability``, is a ConfigError
then, not a wrong model later; a noisy sum that wrapped anyway is caught by a range check and the round skipped.

What a client can only know from SETUP makes it encode then: the rotation's signs (drawn from the round's session
id) and, under distributed DP, the round's clip norm S (carried in SETUP's context: with adaptive clipping the
server moves it every round) and the participant count its noise share depends on. The vector on the wire is
``[update (padded to a power of two when rotated) | count under the clip (adaptive clipping) | weight]``.
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
    Side,
    saved_state,
)
from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.errors import ConfigError
from privfed.privacy.distributed import (
    MAX_POISSON_MU,
    MAX_ROUNDING_TRIES,
    DistributedDp,
    SkellamShare,
    wrap_probability,
)
from privfed.secure.encoding import (
    EncodingStats,
    FixedPointEncoding,
    UniformSource,
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
    """Encodes the update at once, or, when the encoding needs SETUP's parameters (rotation, distributed DP), as
    soon as both are there; hands the words to the state machine then."""

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
        if self.backend.encodes_at_setup:
            self._vector = np.array(vector, dtype=np.float64)
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
        """Clip, rotation, noise share and words, once both the update and SETUP's parameters are known."""
        if self.client.stage is ClientStage.AWAIT_SETUP:
            return
        tick = time.perf_counter()
        params = self.client.params
        share = self.backend.noise_share(len(params.participants), clip=self.backend.round_clip(params))
        if share is not None:
            self.backend.check_noise_setup(params, share)
        if self._vector is not None:
            vector, self._vector = self._vector, None
            self._ints, self.stats = self.backend.encode_at_setup(vector, params, share)
        if self._ints is None:
            return
        ints, self._ints = self._ints, None
        if share is not None:
            ints[:-1] += share.sample(ints.size - 1)  # the weight stays exact
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

    def noise_spent(self) -> SkellamShare | None:
        if self.backend.distributed is None or self.client.stage not in (
                ClientStage.AWAIT_CONSISTENCY, ClientStage.AWAIT_UNMASK, ClientStage.DONE):
            return None
        params = self.client.params
        return self.backend.noise_share(len(params.participants), clip=self.backend.round_clip(params))

    def report(self) -> dict:
        """Under distributed DP the encoding's statistics and time depend on the update (clipped values, rounding
        error, conditional rounding's retries) and are not covered by the noise: they stay on the client."""
        private = self.backend.distributed is not None
        return {"stats": None if private else self.stats, "encode_seconds": 0.0 if private else self.encode_seconds,
                "crypto_seconds": self.client.timer.seconds}


class SecAggServerHalf(ServerHalf):
    """Routes the round through a :class:`SecAggServer` and decodes the unmasked sum; counts bytes as received."""

    def __init__(self, params: RoundParameters | None, encoding: FixedPointEncoding, details: dict,
                 share: SkellamShare | None, participants: list[int], rotation: RandomizedHadamard | None = None,
                 sum_bound: int = 0, max_wrap_probability: float = 0.0):
        self.started = time.perf_counter()
        self.encoding, self.details, self.share, self.rotation = encoding, details, share, rotation
        self.sum_bound = sum_bound  # with noise: the most steps any coordinate of a sum that did not wrap holds
        self.max_wrap_probability = max_wrap_probability
        self.participants = participants
        self.server = None if params is None else SecAggServer(params)
        self.expected: set[int] = set()  # who was sent the current batch
        self.answered: set[int] = set()
        self.left: dict[int, str] = {}  # client -> the message it did not answer
        self.left_at: list[DropoutStage] = []
        self.received = dict.fromkeys(participants, 0)
        self.sent = dict.fromkeys(participants, 0)
        self.total: np.ndarray | None = None
        self.under_clip: float | None = None
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
                self.contributors, self.recovered = result.contributors, result.recovered_dropouts
                self.total = self._decode(result.total)
        except (RoundAborted, ProtocolError) as err:
            self.abort_reason = str(err)
            return {}
        return self._batch(outgoing)

    def _decode(self, words: np.ndarray) -> np.ndarray | None:
        """The unmasked sum -> ``[update sum, total weight]`` (None, with the reason, if the noisy sum wrapped)."""
        total = self.encoding.decode_sum(words)
        if self.share is not None:
            wrapped = int(np.count_nonzero(np.abs(total[:-1]) > self.sum_bound * self.encoding.step))
            if wrapped:
                self.abort_reason = (f"{wrapped} value(s) of the noisy sum lie beyond the {self.sum_bound} steps "
                                     f"that the clients' values and budgeted noise reach: wrapped around "
                                     f"2^{self.encoding.word_bits}, or noise past its slack (a chance of at most "
                                     f"{self.max_wrap_probability:g} a round for honest clients)")
                return None
            if self.share.count_steps:
                self.under_clip = float(total[-2] / (self.share.count_steps * self.encoding.step))
                total = np.delete(total, -2)
        total = self.encoding.decode_contribution_sum(total)
        if self.rotation is not None:
            total = np.append(self.rotation.unrotate(total[:-1]), total[-1])
        return total

    def outcome(self) -> AggregationOutcome:
        n = len(self.participants)
        details = {**self.details, "dropouts": len(self.left),
                   "dropped_stage": self.left_at[0].value if self.left_at else None,
                   "dropouts_recovered": len(self.recovered), "left": {str(c): why for c, why in self.left.items()},
                   "server_crypto_seconds": 0.0 if self.server is None else self.server.timer.seconds,
                   "bytes_up_max": max(self.received.values(), default=0), "abort_reason": self.abort_reason}
        if self.under_clip is not None:
            details["under_clip"] = self.under_clip
        if self.server is None:
            return AggregationOutcome.aborted(self.abort_reason, self.started)
        return AggregationOutcome(total=self.total, contributors=self.contributors,
                                  bytes_up_per_client=sum(self.received.values()) // n,
                                  bytes_down_per_client=sum(self.sent.values()) // n,
                                  seconds=time.perf_counter() - self.started, details=details, noise=self.share,
                                  bytes_up_total=sum(self.received.values()),
                                  bytes_down_total=sum(self.sent.values()), under_clip=self.under_clip)

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
                 distributed: DistributedDp | None = None, uniform: UniformSource = os_uniform):
        self.cfg = cfg
        self.uniform = uniform
        self.distributed = distributed
        self.vector_length, self.max_clients = vector_length, max_clients
        # on the wire: the update part (padded to a power of two when rotated), the count (adaptive clipping), weight
        self.rotates = cfg.rotation and vector_length > 1
        self.counts = distributed is not None and distributed.counts_under_clip
        update_values = padded_length(vector_length - 1) if self.rotates else vector_length - 1
        self.wire_length = update_values + self.counts + 1
        self.encodes_at_setup = self.rotates or distributed is not None
        self.max_clip = 0.0 if distributed is None else distributed.largest_clip
        self.encoding = self._encoding()
        self.update_clip = 0.0 if distributed is None else distributed.update_clip  # this round's S
        self.identities: dict[int, Ed25519PrivateKey] = {}
        self.directory: dict[int, bytes] = {}  # client -> its identity's public key, known to all

    @classmethod
    def for_run(cls, cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                distributed: DistributedDp | None, progress: bool, side: Side) -> SecAggBackend:
        return cls(cfg, max_clients, vector_length, distributed)

    def _encoding(self) -> FixedPointEncoding:
        """The encoding whose exact sum of ``max_clients`` inputs cannot wrap, and whose noisy sum wraps with at
        most ``aggregation.max_wrap_probability`` a round.

        The noise share is counted in steps, so it depends on the step: finer values need more noise steps. Under
        distributed DP the automatic word is the smaller of 32 and 64 bits that holds the configured (or 20) value
        bits with their noise; under a fixed word, automatic value bits are the finest whose values and noise fit.
        """
        cfg, clients = self.cfg, self.max_clients
        exact = FixedPointEncoding.for_clients(cfg.clip_range, cfg.value_bits, clients, word_bits=cfg.word_bits)
        if self.distributed is None:
            return exact
        if cfg.value_bits or not cfg.word_bits:  # the value bits are given (or the automatic word's 20)
            self._share_at(exact.step).check_sampleable()
            words = (cfg.word_bits,) if cfg.word_bits else (32, 64)
            for word_bits in words:
                candidate = FixedPointEncoding(cfg.clip_range, exact.value_bits, word_bits)
                if self._sum_bound(candidate) < 2 ** (word_bits - 1):
                    return candidate
            raise self._refusal(FixedPointEncoding(cfg.clip_range, exact.value_bits, words[-1]), "at these value bits")
        for value_bits in range(exact.value_bits, 1, -1):
            candidate = FixedPointEncoding(cfg.clip_range, value_bits, cfg.word_bits)
            if self._share_at(candidate.step).client_mu <= MAX_POISSON_MU and \
                    self._sum_bound(candidate) < 2 ** (cfg.word_bits - 1):
                return candidate
        raise self._refusal(FixedPointEncoding(cfg.clip_range, 2, cfg.word_bits), "even at 2-bit values")

    def _refusal(self, encoding: FixedPointEncoding, where: str) -> ConfigError:
        """The error naming the wrap probability of the largest round's noisy sum at ``encoding``."""
        clients, k = self.max_clients, encoding.word_bits
        share = self._share_at(encoding.step)
        headroom = 2 ** (k - 1) - 1 - self._values_bound(encoding, clients, share)
        chance = wrap_probability(clients * share.client_mu, headroom, self.wire_length - 1)
        key = "aggregation.value_bits" if self.cfg.value_bits and k == 64 else "aggregation.word_bits"
        return ConfigError(key, f"at {k} bits the noisy sum of {clients} clients (noise multiplier "
                               f"{self.distributed.noise_multiplier:g}, {self.wire_length - 1} noised values) wraps "
                               f"around with probability {chance:.2g} a round {where} (more than "
                               f"aggregation.max_wrap_probability={self.cfg.max_wrap_probability:g}); "
                               + ("lower value_bits" if key == "aggregation.value_bits" else
                                  "raise word_bits" + (" or lower value_bits" if self.cfg.value_bits else "")))

    def _share_at(self, step: float) -> SkellamShare:
        """The share of the largest round at ``step`` and the largest clip norm: the most noise any round adds."""
        return self.noise_share(self.max_clients, step, self.max_clip)

    def _sum_bound(self, encoding: FixedPointEncoding, clients: int | None = None,
                   share: SkellamShare | None = None) -> int:
        """The most steps any value of a noisy sum holds unless it wraps (default: the largest round, largest
        noise): the clients' values (or their counts, if larger) plus the slack that keeps the noise within bounds
        but with ``aggregation.max_wrap_probability``."""
        clients = self.max_clients if clients is None else clients
        share = self._share_at(encoding.step) if share is None else share
        return self._values_bound(encoding, clients, share) + share.slack(clients, self.wire_length - 1,
                                                                          self.cfg.max_wrap_probability)

    @staticmethod
    def _values_bound(encoding: FixedPointEncoding, clients: int, share: SkellamShare) -> int:
        """The most steps the exact part of a sum holds: each client's value, or its count if that is larger."""
        return clients * max(2 ** (encoding.value_bits - 1) - 1, share.count_steps)

    def noise_share(self, num_clients: int, step: float | None = None,
                    clip: float | None = None) -> SkellamShare | None:
        """The Skellam share each of a round's ``num_clients`` adds at the encoding's step (or ``step``) and this
        round's clip norm (or ``clip``); None without distributed DP."""
        if self.distributed is None:
            return None
        d = self.distributed
        return SkellamShare(noise_multiplier=d.noise_multiplier, update_clip=self.update_clip if clip is None else clip,
                            step=self.encoding.step if step is None else step,
                            dimension=self.wire_length - 1 - self.counts,
                            min_clients=round_threshold(num_clients, self.cfg.neighbours, self.cfg.threshold),
                            count_noise=d.count_noise)

    def set_update_clip(self, clip: float) -> None:
        """The clip norm S of the rounds that start from now on (adaptive clipping moves it), sent in SETUP."""
        if self.distributed is None:
            raise ValueError("a clip norm applies under distributed DP only")
        if not 0 < clip <= self.max_clip:
            raise ValueError(f"clip norm {clip:g} outside (0, {self.max_clip:g}]")
        self.update_clip = clip

    def round_clip(self, params: RoundParameters) -> float | None:
        """The clip norm SETUP carries (None without distributed DP); ProtocolError if it is not one the
        encoding can hold (a client's noise is calibrated to whatever norm it clips to, so a server choosing S
        cannot weaken the privacy of the sum, only its accuracy)."""
        if self.distributed is None:
            return None
        try:
            clip = float(msgpack.unpackb(params.context, raw=False)["update_clip"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            raise ProtocolError("setup carries no clip norm, which distributed DP needs") from None
        if not 0 < clip <= self.max_clip:
            raise ProtocolError(f"setup's clip norm {clip!r} is outside (0, {self.max_clip:g}]")
        return clip

    def check_noise_setup(self, params: RoundParameters, share: SkellamShare) -> None:
        """A client's noise share is 1/t of the round's noise for its own config's threshold t: a SETUP that would
        let a sum complete with fewer shares, or that names more participants than the run was sized for (padding
        them raises t), is refused (ProtocolError)."""
        if len(params.participants) > self.max_clients:
            raise ProtocolError(f"setup names {len(params.participants)} participants; the run allows at most "
                                f"{self.max_clients}")
        if params.threshold < share.min_clients:
            raise ProtocolError(f"setup's threshold {params.threshold} is below the {share.min_clients} shares each "
                                "client's distributed-DP noise is calibrated for")

    def encode_at_setup(self, vector: np.ndarray, params: RoundParameters,
                        share: SkellamShare | None) -> tuple[np.ndarray, EncodingStats]:
        """A contribution ``[update, weight]`` -> the integers of the wire layout, before noise: under distributed
        DP the update clipped to the round's norm (and its bit, with adaptive clipping), rotated if configured, and
        rounded conditionally (again until its integer norm is within the sensitivity the noise is calibrated to)."""
        update, weight = vector[:-1], vector[-1]
        under = False
        if share is not None:
            norm = float(np.linalg.norm(update))
            under = norm <= share.update_clip
            if norm > share.update_clip:
                update = update * (share.update_clip / norm)
        if self.rotates:
            update = self.rotation(params.session).rotate(update)
        for _ in range(MAX_ROUNDING_TRIES):  # conditional randomized rounding: the norm the noise is calibrated to
            ints, stats = self.encoding.quantise_contribution(np.append(update, weight), self.uniform)
            if share is None or np.linalg.norm(ints[:-1].astype(np.float64)) <= share.update_l2_sensitivity:
                break
        else:
            raise RuntimeError(f"{MAX_ROUNDING_TRIES} stochastic roundings all exceeded the norm bound "
                               f"{share.update_l2_sensitivity:.6g} steps")
        if self.counts:
            ints = np.insert(ints, -1, share.count_steps if under else 0)
        return ints, stats

    def install_identity(self, client_id: int, key: Ed25519PrivateKey, directory: dict[int, bytes]) -> None:
        """A client's long-term identity and the directory of public keys, given out of band (a Flower node's key
        file and directory, :mod:`privfed.secure.identities`) instead of made here."""
        self.identities[client_id] = key
        self.directory = dict(directory)  # a new dict: halves made earlier keep the directory they were given

    def identity(self, client_id: int) -> tuple[Ed25519PrivateKey | None, dict[int, bytes]]:
        """The client's identity key and the directory of public keys (None, {} without the consistency check);
        made here, for a simulated PKI, unless :meth:`install_identity` gave them."""
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
        context = b"" if self.distributed is None else msgpack.packb({"update_clip": self.update_clip})
        params = RoundParameters(os.urandom(SESSION_BYTES), round_idx, tuple(ids), degree,
                                 round_threshold(len(ids), self.cfg.neighbours, self.cfg.threshold),
                                 self.encoding.word_bits, self.wire_length, self.cfg.consistency_check, context)
        details = {"protocol": "secagg+" if degree else "secagg", "clients": len(ids),
                   "neighbours": degree or len(ids) - 1, "threshold": params.threshold,
                   "word_bits": self.encoding.word_bits, "value_bits": self.encoding.value_bits,
                   "clip_range": self.encoding.clip_range, "step": self.encoding.step,
                   "rotation": self.rotates, "wire_values": self.wire_length,
                   "consistency_check": self.cfg.consistency_check}
        share = self.noise_share(len(ids))
        sum_bound = 0
        if share is not None:
            sum_bound = self._sum_bound(self.encoding, len(ids), share)
            headroom = 2 ** (self.encoding.word_bits - 1) - 1 - self._values_bound(self.encoding, len(ids), share)
            details.update(update_clip=share.update_clip, noise_multiplier=share.noise_multiplier,
                           wrap_probability=wrap_probability(len(ids) * share.client_mu, headroom,
                                                             self.wire_length - 1))
            if share.count_steps:
                details.update(count_steps=share.count_steps, count_noise_std=share.count_noise_std,
                               update_noise_multiplier=share.update_noise_multiplier)
        return SecAggServerHalf(params, self.encoding, details, share, ids,
                                self.rotation(params.session) if self.rotates else None, sum_bound,
                                self.cfg.max_wrap_probability)

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
