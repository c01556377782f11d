"""``aggregation: paillier``: clients encrypt packed updates under their shared key; the server multiplies ciphertexts.

Per round the server half asks every participant for its input (INPUT_REQUEST, which carries the session id it
chose). Each client half has already clipped and stochastically rounded its update with the shared fixed-point
encoding, packed ~120 values per plaintext (:mod:`privfed.secure.packing`) and encrypted them with obfuscators its
back-end's worker pool made while it trained; it uploads PAILLIER_INPUT. The server half, which holds only the public
key, multiplies the ciphertexts into a running product, then sends the encrypted sum (PAILLIER_SUM) to one
contributor, the decryptor, whose half decrypts it and returns the plaintext sum (PAILLIER_DECRYPTED); should the
decryptor not answer, the next contributor is asked. Unlike SecAgg there are no key-agreement rounds and any client
may drop at any time: the sum is simply over those who uploaded.
"""
from __future__ import annotations

import dataclasses
import logging
import os
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
from privfed.errors import ConfigError
from privfed.privacy.distributed import DistributedDp
from privfed.secure.encoding import (
    AUTOMATIC_WORD_VALUE_BITS,
    EncodingStats,
    FixedPointEncoding,
    UniformSource,
    os_uniform,
    summarise,
)
from privfed.secure.messages import SERVER, SESSION_BYTES, Message, MessageType, ProtocolError, decode, encode
from privfed.secure.packing import SlotLayout
from privfed.secure.paillier import (
    ObfuscatorMaker,
    PaillierServer,
    PaillierWorkers,
    ciphertext_bytes,
    decrypt_sum,
    encrypt_packed,
    input_message,
    message_limit,
)
from privfed.secure.paillier_keys import SECURITY_BITS, KeyMismatchError, PaillierKey, distribute_key, security_note

log = logging.getLogger(__name__)
T = MessageType
REQUEST_BYTES = 256  # an INPUT_REQUEST: the envelope and an empty body


def sum_dtype(layout: SlotLayout) -> np.dtype:
    """The integers the decrypted sum travels as: a summed value has magnitude below 2^(slot_bits - 2)."""
    return np.dtype("<i4" if layout.slot_bits <= 32 else "<i8")


class PaillierClientHalf(ClientHalf):
    """Encrypts its update as soon as it has it; uploads it when asked; decrypts the sum if chosen to."""

    def __init__(self, backend: PaillierBackend, client_id: int, round_idx: int):
        self.backend, self.client_id, self.round = backend, client_id, round_idx
        self.session: bytes | None = None  # from the server's INPUT_REQUEST
        self.uploaded = False
        self.decrypted = False  # a half decrypts at most one sum: a second request could be a single input
        self.ciphertexts: list[int] | None = None
        self.stats: EncodingStats | None = None
        self.seconds = {"encode": 0.0, "wait": 0.0, "encrypt": 0.0, "decrypt": 0.0}
        self.bytes_sent = self.bytes_received = 0

    def set_update(self, vector: np.ndarray) -> None:
        b = self.backend
        tick = time.perf_counter()
        ints, stats = b.encoding.quantise_contribution(vector, b.uniform)
        self.set_plaintexts(b.layout.pack(ints), stats, time.perf_counter() - tick)

    def set_plaintexts(self, plaintexts: list[int], stats: EncodingStats, encode_seconds: float = 0.0) -> None:
        """Encrypt packed plaintexts as this client's input (:meth:`set_update` after encoding; a simulated
        malicious client calls it with plaintexts it packed its own way)."""
        b = self.backend
        self.stats = stats
        packed = time.perf_counter()
        obfuscators = b.workers.take(b.ciphertexts, b.progress)
        ready = time.perf_counter()
        self.ciphertexts = encrypt_packed(plaintexts, b.key, obfuscators)
        self.seconds.update(encode=encode_seconds, wait=ready - packed, encrypt=time.perf_counter() - ready)

    def handle(self, raw: bytes) -> bytes:
        reply = self._on_sum(raw) if self.uploaded else self._on_request(raw)
        self.bytes_received += len(raw)
        self.bytes_sent += len(reply)
        return reply

    def _on_request(self, raw: bytes) -> bytes:
        b = self.backend
        message = decode(raw, max_bytes=REQUEST_BYTES, session=None, round_idx=self.round, sender=SERVER,
                         allowed=(T.INPUT_REQUEST,))
        if self.ciphertexts is None:
            raise ProtocolError(f"client {self.client_id}: asked for its input, but it has no update to send")
        self.session = message.session
        reply = input_message(b.key, b.layout, b.vector_length, self.ciphertexts, self.session, self.round,
                              self.client_id)
        self.ciphertexts, self.uploaded = None, True
        return reply

    def _on_sum(self, raw: bytes) -> bytes:
        b = self.backend
        if self.decrypted:
            raise ProtocolError(f"client {self.client_id}: already decrypted this round's sum; a second \"sum\" "
                                "could be another client's input alone")
        b.workers.cancel_prefetch()  # obfuscators queued for clients that dropped must not delay decryption
        tick = time.perf_counter()
        try:
            sums, contributors = decrypt_sum(raw, b.key, b.layout, b.vector_length, self.session, self.round,
                                             b.workers, b.progress)
        except KeyMismatchError as err:
            raise ProtocolError(f"client {self.client_id}: {err}") from None
        self.seconds["decrypt"] += time.perf_counter() - tick
        if len(contributors) < 2 or self.client_id not in contributors or not self.uploaded:
            # else a server could send one client's ciphertexts as a "sum" and have them decrypted
            raise ProtocolError(f"client {self.client_id}: refuses to decrypt a sum of {sorted(contributors)}: a sum "
                                "must hold 2 or more inputs, its own among them")
        self.decrypted = True
        return encode(Message(T.PAILLIER_DECRYPTED, self.session, self.round, self.client_id, {
            "sum": sums.astype(sum_dtype(b.layout)).tobytes(), "contributors": list(contributors)}))

    def export_state(self) -> bytes:
        width = ciphertext_bytes(self.backend.key)
        return msgpack.packb({
            "protocol": Aggregation.PAILLIER.value, "id": self.client_id, "round": self.round,
            "session": self.session, "uploaded": self.uploaded, "decrypted": self.decrypted,
            "ciphertexts": None if self.ciphertexts is None else [int(c).to_bytes(width, "big")
                                                                  for c in self.ciphertexts],
            "stats": None if self.stats is None else dataclasses.astuple(self.stats), "seconds": self.seconds,
            "bytes": [self.bytes_sent, self.bytes_received]}, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes, backend: PaillierBackend) -> PaillierClientHalf:
        state = saved_state(blob, Aggregation.PAILLIER)
        try:
            half = cls(backend, state["id"], state["round"])
            half.session, half.uploaded, half.decrypted = state["session"], state["uploaded"], state["decrypted"]
            if state["ciphertexts"] is not None:
                half.ciphertexts = [int.from_bytes(c, "big") for c in state["ciphertexts"]]
            half.stats = None if state["stats"] is None else EncodingStats(*state["stats"])
            half.seconds = dict(state["seconds"])
            half.bytes_sent, half.bytes_received = state["bytes"]
        except STATE_ERRORS as err:
            raise ProtocolError(f"not a saved paillier client state: {err}") from None
        return half

    def report(self) -> dict:
        return {"stats": self.stats, **self.seconds}


class PaillierServerHalf(ServerHalf):
    """Multiplies the inputs' ciphertexts with a :class:`PaillierServer` (public key only); has a contributor
    decrypt the product and decodes the plaintext sum it returns."""

    def __init__(self, public: PaillierKey, layout: SlotLayout, encoding: FixedPointEncoding, length: int,
                 round_idx: int, participants: list[int], details: dict, setup_bytes: tuple[int, int]):
        self.public, self.layout, self.encoding, self.length = public, layout, encoding, length
        self.round, self.participants, self.details = round_idx, participants, details
        self.setup_up, self.setup_down = setup_bytes  # the key hand-out, billed to the first round
        self.started = time.perf_counter()
        self.server: PaillierServer | None = None
        self.collecting = True  # inputs; then decryption
        self.received = dict.fromkeys(participants, 0)
        self.sent = dict.fromkeys(participants, 0)
        self.uploaded = 0
        self.refused: str | None = None
        self.encrypted_sum = b""
        self.asked: list[int] = []
        self.total: np.ndarray | None = None
        self.abort_reason: str | None = None

    def open(self) -> dict[int, bytes]:
        self.started = time.perf_counter()
        self.server = PaillierServer(self.public, self.layout, self.length, os.urandom(SESSION_BYTES), self.round)
        request = encode(Message(T.INPUT_REQUEST, self.server.session, self.round, SERVER, {}))
        return self._send(dict.fromkeys(self.participants, request))

    def _send(self, outgoing: dict[int, bytes]) -> dict[int, bytes]:
        for c, raw in outgoing.items():
            self.sent[c] += len(raw)
        return outgoing

    @property
    def requests_input(self) -> bool:
        return self.collecting

    @property
    def stage(self) -> DropoutStage:
        return DropoutStage.MASKED_INPUT if self.collecting else DropoutStage.UNMASKING

    def receive(self, sender: int, raw: bytes) -> None:
        if sender not in self.received:
            raise ProtocolError(f"client {sender} is not part of this round")
        self.received[sender] += len(raw)
        if self.collecting:
            self._receive_input(sender, raw)
        else:
            self._receive_sum(sender, raw)

    def _receive_input(self, sender: int, raw: bytes) -> None:
        self.uploaded += len(raw)
        try:
            self.server.receive(sender, raw)
        except (ProtocolError, KeyMismatchError) as err:  # as SecAgg: a refused input aborts the round
            self.refused = self.refused or f"client {sender}'s input was refused: {err}"
            raise ProtocolError(self.refused) from None

    def _receive_sum(self, sender: int, raw: bytes) -> None:
        if not self.asked or sender != self.asked[-1] or self.total is not None:
            raise ProtocolError(f"client {sender} was not asked to decrypt the sum")
        body = decode(raw, max_bytes=self.length * 8 + 16 * len(self.participants) + REQUEST_BYTES,
                      session=self.server.session, round_idx=self.round, sender=sender,
                      allowed=(T.PAILLIER_DECRYPTED,)).body
        dtype = sum_dtype(self.layout)
        if body["contributors"] != sorted(self.server.contributors) or len(body["sum"]) != self.length * dtype.itemsize:
            raise ProtocolError(f"client {sender}'s decrypted sum is not the sum of this round's "
                                f"{len(self.server.contributors)} inputs of {self.length} values")
        self.total = self.encoding.decode_contribution_sum(np.frombuffer(body["sum"], dtype=dtype).astype(np.float64)
                                                           * self.encoding.step)

    def advance(self) -> dict[int, bytes]:
        if self.collecting:
            self.collecting = False
            contributors = len(self.server.contributors)
            if self.refused:
                self.abort_reason = self.refused
                return {}
            if contributors < 2:
                self.abort_reason = (f"only {contributors} client(s) uploaded; summing fewer than 2 would reveal an "
                                     "update")
                return {}
            self.encrypted_sum = self.server.result()
        if self.total is not None:
            return {}
        waiting = [c for c in sorted(self.server.contributors) if c not in self.asked]
        if not waiting:
            self.abort_reason = "no contributor decrypted the sum"
            return {}
        self.asked.append(waiting[0])
        return self._send({waiting[0]: self.encrypted_sum})

    def outcome(self) -> AggregationOutcome:
        contributors = sorted(self.server.contributors)
        details = {**self.details, "dropouts": len(self.participants) - len(contributors), "abort_reason": None}
        if self.abort_reason is not None:
            return AggregationOutcome.aborted(self.abort_reason, self.started, details)
        details.update({"aggregate_seconds": self.server.seconds,  # server: check and multiply every input
                        "expansion_vs_float32": (self.uploaded / len(contributors)) / (4 * self.length)})
        return AggregationOutcome(
            total=self.total, contributors=tuple(contributors),
            bytes_up_per_client=(sum(self.received.values()) + self.setup_up) // len(self.participants),
            bytes_down_per_client=max(self.sent.values()) + self.setup_down,  # the decryptor's: the encrypted sum
            seconds=time.perf_counter() - self.started, details=details,
            bytes_up_total=sum(self.received.values()) + self.setup_up,
            bytes_down_total=sum(self.sent.values()) + self.setup_down * len(self.participants))

    def readable(self, raw: bytes) -> tuple[str, np.ndarray | None]:
        try:
            message = decode(raw, max_bytes=message_limit(self.public, self.layout, self.length),
                             session=self.server.session, round_idx=self.round)
        except ProtocolError:
            return "MALFORMED", None
        if message.type is not T.PAILLIER_INPUT:
            return message.type.name, None
        data, width = message.body["ciphertexts"], ciphertext_bytes(self.public)
        return message.type.name, np.array([int.from_bytes(data[i:i + width], "big")
                                            for i in range(0, len(data), width)], dtype=object)


def server_key(cfg: AggregationConfig) -> tuple[PaillierKey, dict]:
    """The public key a network engine's server holds: from ``aggregation.key_file``, which must not hold the
    private key (the nodes hold the pair, each from its own key file)."""
    if not cfg.key_file:
        raise ConfigError("aggregation.key_file", "over Flower the clients' Paillier key pair reaches the nodes "
                                                  "out of band: make it with privfed keygen KEY, give the server "
                                                  "KEY.pub as aggregation.key_file and each node KEY as its "
                                                  "paillier-key")
    key = PaillierKey.load(cfg.key_file)
    if key.has_private:
        raise ConfigError("aggregation.key_file", f"{cfg.key_file} holds the private key, which the server must "
                                                  "never hold: give the server the public key only (KEY.pub "
                                                  "from privfed keygen)")
    check_key_bits(cfg, key)
    return key, {"source": "key files (the server: the public key; each node: the pair)",
                 "fingerprint": key.fingerprint}


def check_key_bits(cfg: AggregationConfig, key: PaillierKey) -> None:
    if key.bits != cfg.key_bits:
        raise ConfigError("aggregation.key_bits", f"{cfg.key_file} holds a {key.bits}-bit key; set "
                                                  f"aggregation.key_bits={key.bits} to use it")


class PaillierBackend(AggregationBackend):
    """Packed Paillier summation with background obfuscators; sized for rounds of up to ``max_clients``.

    Every limit (slot overflow, plaintext overflow, key size) is checked here, before any client trains. The
    back-end holds the clients' key pair and the worker pool (the in-process engine: one pool serves every
    client half); server halves get the public key only.
    """

    client_type = PaillierClientHalf

    def __init__(self, cfg: AggregationConfig, max_clients: int, vector_length: int, client_ids: list[int],
                 progress: bool = False, uniform: UniformSource = os_uniform, side: Side = Side.BOTH):
        self.cfg, self.vector_length, self.progress, self.uniform = cfg, vector_length, progress, uniform
        self.max_clients, self.side = max_clients, side
        value_bits = cfg.value_bits or AUTOMATIC_WORD_VALUE_BITS  # fewer value bits: narrower slots, more a ciphertext
        self.encoding = FixedPointEncoding(cfg.clip_range, value_bits, word_bits=64)  # no words: only ints
        # the modulus has exactly key_bits bits, so plaintexts below 2^(key_bits - 1) are below n
        self.layout = SlotLayout.for_clients(value_bits, max_clients, cfg.key_bits - 1)
        if side is Side.SERVER:
            self.key, self.key_setup = server_key(cfg)
        else:
            self.key, self.key_setup = self._client_key(cfg, client_ids)
        self._setup_unbilled = True  # the key hand-out is billed to the first round's bytes up and down
        self.server_key = self.key.public()  # all the server ever holds
        self.ciphertexts = self.layout.plaintexts_for(vector_length)
        # obfuscators and decryption are the clients' work: a server-side back-end starts no pool
        self.workers = None if side is Side.SERVER else PaillierWorkers(self.key, cfg.workers or os.cpu_count() or 1)
        self._cpu_mark = 0.0  # the pool's CPU seconds when the current round's server half was made
        if self.key.bits < 3072:
            log.warning("aggregation.key_bits: %s", security_note(self.key.bits))

    @classmethod
    def for_run(cls, cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                distributed: DistributedDp | None, progress: bool, side: Side) -> PaillierBackend:
        return cls(cfg, max_clients, vector_length, client_ids, progress, side=side)

    @staticmethod
    def _client_key(cfg: AggregationConfig, client_ids: list[int]) -> tuple[PaillierKey, dict]:
        """The key pair every client holds: read from the key file, or generated by one client and handed out."""
        if cfg.key_file:
            key = PaillierKey.load(cfg.key_file)
            if not key.has_private:
                raise ConfigError("aggregation.key_file", f"{cfg.key_file} holds only a public key; the clients need "
                                                          "the key pair to decrypt the sum")
            check_key_bits(cfg, key)
            return key, {"source": "key_file", "fingerprint": key.fingerprint}
        holder = min(client_ids)
        key = PaillierKey.generate(cfg.key_bits)
        handed = distribute_key(key, holder, client_ids, os.urandom(SESSION_BYTES))
        if any(k != key for k in handed.keys.values()):  # cannot happen unless the sealing is broken
            raise RuntimeError("a client opened a different Paillier key from the one its holder sent")
        return key, {"source": f"generated by client {holder}, sent sealed to {len(client_ids) - 1} clients",
                     "fingerprint": key.fingerprint, "bytes_up_holder": handed.bytes_up,
                     "bytes_down_per_client": handed.bytes_down_per_client}

    def plan(self) -> str:
        """Key, packing, bytes and an estimate of the crypto time per round, from a few timed operations here."""
        upload = self.ciphertexts * ciphertext_bytes(self.key)
        text = (f"paillier: {self.key.bits}-bit key ({SECURITY_BITS.get(self.key.bits, '?')}-bit security), "
                f"{self.layout.slots} values per ciphertext ({self.layout.slot_bits}-bit slots, up to "
                f"{self.layout.max_clients} clients); {self.ciphertexts:,} ciphertexts = {upload / 1e6:.2f} MB up per "
                f"client per round ({upload / (4 * self.vector_length):.2f}x float32)")
        if self.workers is None:
            return text + "; the nodes encrypt, and one of them decrypts the sum"
        maker = ObfuscatorMaker(self.key)
        start = time.perf_counter()
        for _ in range(3):
            maker.fresh()
        per_obfuscator = (time.perf_counter() - start) / 3
        private = self.key.private_key()
        start = time.perf_counter()
        private.raw_decrypt(int(maker.fresh()))
        per_decryption = time.perf_counter() - start
        processes = self.workers.processes
        seconds = (self.layout.max_clients * per_obfuscator + per_decryption) * self.ciphertexts / processes
        return (f"{text}; estimated crypto time {seconds:.1f} s per round on {processes} processes, partly hidden "
                "behind training")

    def prepare_round(self, round_idx: int, client_ids: list[int]) -> None:
        """Start the round's obfuscators in the background while the clients train (a node: its own)."""
        if self.workers is None:
            return
        clients = 1 if self.side is Side.CLIENT else len(client_ids)
        needed = clients * self.ciphertexts - self.workers.queued
        if needed > 0:
            self.workers.prefetch(needed)

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()

    def server_half(self, round_idx: int, participants: list[int]) -> PaillierServerHalf:
        setup = (0, 0)
        if self._setup_unbilled:  # round 1 pays for handing out the key pair
            setup = (self.key_setup.get("bytes_up_holder", 0), self.key_setup.get("bytes_down_per_client", 0))
            self._setup_unbilled = False
        self._cpu_mark = 0.0 if self.workers is None else self.workers.cpu_seconds
        ids = sorted(participants)
        details = {"protocol": "paillier", "key_bits": self.key.bits, "key": dict(self.key_setup),
                   "slots_per_ciphertext": self.layout.slots, "slot_bits": self.layout.slot_bits,
                   "value_bits": self.encoding.value_bits, "clip_range": self.encoding.clip_range,
                   "step": self.encoding.step, "ciphertexts_per_client": self.ciphertexts,
                   "bytes_per_ciphertext": ciphertext_bytes(self.key), "clients": len(ids)}
        return PaillierServerHalf(self.server_key, self.layout, self.encoding, self.vector_length, round_idx, ids,
                                  details, setup)

    def client_half(self, round_idx: int, client_id: int) -> PaillierClientHalf:
        if self.workers is None:
            raise ProtocolError("a server-side Paillier back-end holds the public key only: it makes no client half")
        return PaillierClientHalf(self, client_id, round_idx)

    def _client_details(self, reports: list[dict]) -> dict:
        uploaders = [r for r in reports if r["stats"] is not None]
        if not uploaders:
            return {}
        n = len(uploaders)
        return {
            **summarise([r["stats"] for r in uploaders]),
            "encode_seconds": sum(r["encode"] for r in uploaders) / n,  # per client: clip, round, pack
            "obfuscator_wait_seconds": sum(r["wait"] for r in uploaders) / n,  # obfuscators not ready in time
            "encrypt_seconds": sum(r["encode"] + r["wait"] + r["encrypt"] for r in uploaders) / n,  # all of it
            "decrypt_seconds": sum(r["decrypt"] for r in reports),
            **({} if self.workers is None else  # in process: obfuscators + decryption, all clients
               {"worker_cpu_seconds": self.workers.cpu_seconds - self._cpu_mark}),
        }
