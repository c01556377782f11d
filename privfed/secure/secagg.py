"""SecAgg (Bonawitz et al., CCS 2017) with SecAgg+'s sparse graph (Bell et al., CCS 2020) as state machines.

One :class:`SecAggClient` and one :class:`SecAggServer` per round. Each takes a message as bytes and returns the
bytes to send, so the same objects run in the in-process simulation and behind any transport. Stages:

0. setup          server -> clients: participants, graph degree, threshold t, word size, vector length
1. advertise keys client: two fresh X25519 pairs (c for encrypting shares, s for mask agreement)
2. share keys     client: a fresh 256-bit self-mask seed b; Shamir shares (threshold t) of b and of s_sk for each
                  neighbour (and itself), AES-GCM-encrypted under HKDF(X25519(c_sk, c_pk_v)) and routed by the server
3. masked input   client: y = x + PRG(b) + sum_v +-PRG(HKDF(X25519(s_sk, s_pk_v))) mod 2^k over neighbours v that
                  shared keys, sent bit-packed (k bits a value, k from 4 to 64); the server adds y into a running
                  sum and keeps nothing else of it
(3b. consistency  optional, against an active server: every client signs the survivor list with its Ed25519 identity
                  key, and each checks >= t valid signatures on the same list before revealing anything)
4. unmask         client: for each neighbour, the share of b if it survived or the share of s_sk if it dropped,
                  never both; the server rebuilds the seeds, removes the masks and is left with sum x mod 2^k.

A client drops at any stage by not answering; while every secret still needed has t live holders the sum is
recovered, otherwise the server raises :class:`RoundAborted` and nothing about the sum is released.
"""
from __future__ import annotations

import contextlib
import hashlib
import enum
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privfed.errors import PrivfedError
from privfed.secure import primitives as crypto
from privfed.secure.graph import neighbour_graph, share_holders
from privfed.secure.messages import SERVER, Message, MessageType, ProtocolError, decode, encode, is_share
from privfed.secure.primitives import MaskStream
from privfed.secure.shamir import combine_many
from privfed.secure.wire import MAX_WORD_BITS, MIN_WORD_BITS, container_dtype, pack, packed_size, reduce, unpack

T = MessageType
SMALL_MESSAGE_BYTES = 4096  # setup, keys, signatures: plus a per-neighbour allowance below
PER_PEER_BYTES = 512


class RoundAborted(PrivfedError):
    """Too few clients survived to recover the sum; the round releases nothing."""


@dataclass(frozen=True)
class RoundParameters:
    session: bytes
    round: int
    participants: tuple[int, ...]
    degree: int  # 0 = complete graph (classic SecAgg)
    threshold: int  # shares needed to recover any client's secret
    word_bits: int  # k: the sum lives in Z_2^k and a masked vector crosses the wire as k bits a value
    length: int  # words per masked vector
    consistency: bool = False
    context: bytes = b""  # the back-end's per-round encoding parameters (opaque to the protocol)


def _transcript(label: bytes, session: bytes, round_idx: int, payload: list) -> bytes:
    return msgpack.packb([label, session, round_idx, payload], use_bin_type=True)


def setup_digest(params: RoundParameters) -> bytes:
    """SHA-256 of everything SETUP told a client: signed with its keys under the consistency check, so a server that
    shows clients different rounds (participants, threshold, or a per-client clip norm in the context, which would
    shrink the others' noise shares) fails every peer's signature check instead of going unnoticed."""
    return hashlib.sha256(msgpack.packb([list(params.participants), params.degree, params.threshold, params.word_bits,
                                         params.length, params.consistency, params.context], use_bin_type=True)).digest()


def _share_aad(session: bytes, round_idx: int, sender: int, receiver: int) -> bytes:
    return _transcript(b"share", session, round_idx, [sender, receiver])


def _mask_seed(private, peer_public: bytes, session: bytes, round_idx: int, a: int, b: int) -> bytes:
    return crypto.derive_key(private, peer_public, b"privfed-secagg-mask", session, round_idx, min(a, b), max(a, b))


def _cipher_key(private, peer_public: bytes, session: bytes, round_idx: int, a: int, b: int) -> bytes:
    return crypto.derive_key(private, peer_public, b"privfed-secagg-share", session, round_idx, min(a, b), max(a, b))


def max_message_bytes(params: RoundParameters) -> int:
    """The largest message any stage may carry: the masked vector, or per-neighbour lists."""
    peers = len(params.participants)
    vector = packed_size(params.length, params.word_bits)
    return max(vector, peers * PER_PEER_BYTES) + SMALL_MESSAGE_BYTES


class ClientStage(enum.Enum):
    AWAIT_SETUP = 0
    AWAIT_PEER_KEYS = 1
    AWAIT_SHARES = 2
    AWAIT_CONSISTENCY = 3
    AWAIT_UNMASK = 4
    DONE = 5


@dataclass
class CryptoTimer:
    """Seconds a party spends in protocol work (crypto, parsing, masking), summed over its calls."""

    seconds: float = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


class SecAggClient:
    """One client's side of one round. Its encoded vector (words of Z_2^k) may come at any time before the routed
    shares arrive: keys are agreed and shared without it. The session id is the one the server's SETUP carries."""

    def __init__(self, client_id: int, round_idx: int, identity: Ed25519PrivateKey | None = None,
                 directory: Mapping[int, bytes] | None = None):
        self.id = client_id
        self.round = round_idx
        self.session: bytes | None = None  # set by SETUP
        self._words: np.ndarray | None = None
        self._identity, self._directory = identity, directory if directory is not None else {}
        self.stage = ClientStage.AWAIT_SETUP
        self.timer = CryptoTimer()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.revealed: dict[int, str] = {}  # peer -> "seed" | "key": what this client disclosed about it

    def set_words(self, words: np.ndarray) -> None:
        """The encoded vector to mask; accepted until the masked input is sent, checked against SETUP then."""
        if self.stage not in (ClientStage.AWAIT_SETUP, ClientStage.AWAIT_PEER_KEYS, ClientStage.AWAIT_SHARES):
            raise ProtocolError(f"client {self.id}: its masked input has been sent; the vector can no longer change")
        self._words = words

    # ------------------------------------------------------------ state, for a client that is a new process per message
    def export_state(self) -> bytes:
        """Everything needed to continue the round elsewhere (msgpack; private keys as raw bytes). The identity key
        and the directory are not included: they are the client's long-term PKI material, supplied on restore."""
        state: dict = {"id": self.id, "round": self.round, "session": self.session, "stage": self.stage.value,
                       "seconds": self.timer.seconds, "bytes_sent": self.bytes_sent,
                       "bytes_received": self.bytes_received, "revealed": self.revealed,
                       "words": None if self._words is None else [self._words.dtype.itemsize * 8,
                                                                  self._words.tobytes()]}
        if self.stage is not ClientStage.AWAIT_SETUP:
            p = self.params
            state.update(params=[p.participants, p.degree, p.threshold, p.word_bits, p.length, p.consistency, p.context],
                         cipher_sk=crypto.private_bytes(self._cipher_sk), mask_sk=crypto.private_bytes(self._mask_sk))
        if self.stage not in (ClientStage.AWAIT_SETUP, ClientStage.AWAIT_PEER_KEYS):
            state.update(peer_keys={p: list(k) for p, k in self.peer_keys.items()}, seed=self._seed,
                         held={p: [list(seed), None if key is None else list(key)]
                               for p, (seed, key) in self.held.items()})
        if self.stage in (ClientStage.AWAIT_CONSISTENCY, ClientStage.AWAIT_UNMASK, ClientStage.DONE):
            state["sharers"] = sorted(self.sharers)
        if hasattr(self, "signed_survivors"):
            state["signed_survivors"] = self.signed_survivors
        return msgpack.packb(state, use_bin_type=True)

    @classmethod
    def restore(cls, blob: bytes, identity: Ed25519PrivateKey | None = None,
                directory: Mapping[int, bytes] | None = None) -> SecAggClient:
        """The client :meth:`export_state` saved, continuing where it stopped."""
        try:
            state = msgpack.unpackb(blob, raw=False, strict_map_key=False)
            client = cls(state["id"], state["round"], identity, directory)
            client.session, client.stage = state["session"], ClientStage(state["stage"])
            client.timer.seconds = state["seconds"]
            client.bytes_sent, client.bytes_received = state["bytes_sent"], state["bytes_received"]
            client.revealed = state["revealed"]
            if state["words"] is not None:
                bits, raw = state["words"]
                client._words = np.frombuffer(raw, dtype=container_dtype(bits)).copy()
            if "params" in state:
                participants, degree, threshold, word_bits, length, consistency, context = state["params"]
                client._start(RoundParameters(client.session, client.round, tuple(participants), degree, threshold,
                                              word_bits, length, consistency, context))
                client._cipher_sk = crypto.private_from_bytes(state["cipher_sk"])
                client._mask_sk = crypto.private_from_bytes(state["mask_sk"])
            if "peer_keys" in state:
                client.peer_keys = {p: tuple(k) for p, k in state["peer_keys"].items()}
                client._seed = state["seed"]
                client.held = {p: (tuple(seed), None if key is None else tuple(key))
                               for p, (seed, key) in state["held"].items()}
            if "sharers" in state:
                client.sharers = set(state["sharers"])
            if "signed_survivors" in state:
                client.signed_survivors = state["signed_survivors"]
        except (KeyError, ValueError, TypeError, msgpack.UnpackException) as err:
            raise ProtocolError(f"not a saved SecAgg client state: {type(err).__name__}: {err}") from None
        return client

    # ------------------------------------------------------------ plumbing
    def _send(self, kind: MessageType, body: dict) -> bytes:
        raw = encode(Message(kind, self.session, self.round, self.id, body))
        self.bytes_sent += len(raw)
        return raw

    def _expect(self, raw: bytes, kind: MessageType, max_bytes: int) -> Message:
        message = decode(raw, max_bytes=max_bytes, session=self.session, round_idx=self.round, sender=SERVER,
                         allowed=(kind,))
        self.bytes_received += len(raw)
        return message

    def handle(self, raw: bytes) -> bytes:
        """Take the server's next message and return the reply; raises ProtocolError on anything unexpected."""
        handlers = {ClientStage.AWAIT_SETUP: self._on_setup, ClientStage.AWAIT_PEER_KEYS: self._on_peer_keys,
                    ClientStage.AWAIT_SHARES: self._on_shares, ClientStage.AWAIT_CONSISTENCY: self._on_consistency,
                    ClientStage.AWAIT_UNMASK: self._on_unmask}
        if self.stage not in handlers:
            raise ProtocolError(f"client {self.id}: the round is over; no further message is accepted")
        with self.timer.measure():
            try:
                return handlers[self.stage](raw)
            except crypto.KeyAgreementError as err:
                raise ProtocolError(f"client {self.id}: {err}") from None

    # ------------------------------------------------------------ stages
    def _on_setup(self, raw: bytes) -> bytes:
        message = self._expect(raw, T.SETUP, SMALL_MESSAGE_BYTES + 16 * (1 << 16))
        body = message.body
        participants = tuple(sorted(body["participants"]))
        if any(not 0 <= c < 2 ** 63 for c in participants) or body["degree"] < 0 or body["degree"] % 2:
            raise ProtocolError(f"client {self.id}: setup names impossible ids or an odd/negative graph degree")
        if self.id not in participants:
            raise ProtocolError(f"client {self.id} is not among the round's participants")
        if not MIN_WORD_BITS <= body["word_bits"] <= MAX_WORD_BITS or body["length"] < 1:
            raise ProtocolError(f"setup asks for {body['length']} words of {body['word_bits']} bits")
        if body["consistency"] and (self._identity is None or not self._directory):
            raise ProtocolError("the consistency check needs an identity key and the directory of public keys")
        self._start(RoundParameters(message.session, self.round, participants, body["degree"], body["threshold"],
                                    body["word_bits"], body["length"], body["consistency"], body["context"]))
        holders = len(self.neighbours) + 1
        if not holders / 2 < self.params.threshold <= holders:
            raise ProtocolError(f"client {self.id}: threshold {self.params.threshold} for {holders} share holders "
                                "is not a majority; a server could then learn both shares of a client")
        self.session = message.session
        self._cipher_sk, cipher_pk = crypto.new_key_pair()
        self._mask_sk, mask_pk = crypto.new_key_pair()
        signature = b""
        if self.params.consistency:
            signature = self._identity.sign(_transcript(b"keys", self.session, self.round,
                                                        [self.id, cipher_pk, mask_pk, setup_digest(self.params)]))
        self.stage = ClientStage.AWAIT_PEER_KEYS
        return self._send(T.ADVERTISE_KEYS, {"cipher_key": cipher_pk, "mask_key": mask_pk, "signature": signature})

    def _start(self, params: RoundParameters) -> None:
        """Adopt the round's parameters (from SETUP, or from a saved state) and what follows from them."""
        self.params = params
        self.graph = neighbour_graph(list(params.participants), params.degree, params.session)
        self.neighbours = set(self.graph[self.id])
        self.max_bytes = max_message_bytes(params)

    def _on_peer_keys(self, raw: bytes) -> bytes:
        peers = self._expect(raw, T.PEER_KEYS, self.max_bytes).body["peers"]
        if not set(peers) <= self.neighbours:
            raise ProtocolError(f"client {self.id}: the server sent keys of non-neighbours {set(peers) - self.neighbours}")
        keys = {}
        for peer, (cipher_pk, mask_pk, signature) in peers.items():
            if self.params.consistency:
                self._verify(peer, signature, _transcript(b"keys", self.session, self.round,
                                                          [peer, cipher_pk, mask_pk, setup_digest(self.params)]))
            keys[peer] = (cipher_pk, mask_pk)
        if len(set(keys.values())) != len(keys) or any(k[0] == k[1] for k in keys.values()):
            raise ProtocolError(f"client {self.id}: advertised keys repeat")
        self.peer_keys = keys
        if len(keys) + 1 < self.params.threshold:
            raise ProtocolError(f"client {self.id}: only {len(keys) + 1} live share holders, threshold "
                                f"{self.params.threshold}")
        self._seed = crypto.fresh_secret()
        all_holders = share_holders(self.id, self.graph)
        seed_shares = dict(zip(all_holders, crypto.split_secret(self._seed, self.params.threshold,
                                                                len(all_holders)), strict=True))
        key_shares = dict(zip(all_holders, crypto.split_secret(crypto.private_bytes(self._mask_sk),
                                                               self.params.threshold, len(all_holders)), strict=True))
        self.held = {self.id: (seed_shares[self.id], None)}  # a client never holds (or reveals) its own key share
        sealed = {}
        for peer, (cipher_pk, _) in keys.items():
            plaintext = msgpack.packb([self.id, peer, list(seed_shares[peer]), list(key_shares[peer])],
                                      use_bin_type=True)
            key = _cipher_key(self._cipher_sk, cipher_pk, self.session, self.round, self.id, peer)
            sealed[peer] = crypto.seal(key, plaintext, _share_aad(self.session, self.round, self.id, peer))
        self.stage = ClientStage.AWAIT_SHARES
        return self._send(T.SHARE_KEYS, {"shares": sealed})

    def _on_shares(self, raw: bytes) -> bytes:
        routed = self._expect(raw, T.ROUTED_SHARES, self.max_bytes).body["shares"]
        if self._words is None:
            raise ProtocolError(f"client {self.id}: asked for its masked input, but it has no vector to send")
        if self._words.shape != (self.params.length,) or self._words.dtype != container_dtype(self.params.word_bits):
            raise ProtocolError(f"setup asks for {self.params.length} words of {self.params.word_bits} bits; client "
                                f"{self.id} holds {self._words.size} of {self._words.dtype.itemsize * 8}")
        if not set(routed) <= set(self.peer_keys):
            raise ProtocolError(f"client {self.id}: shares from clients whose keys it never saw")
        if len(routed) + 1 < self.params.threshold:  # else a server could unmask this client from its own seed
            raise ProtocolError(f"client {self.id}: shares from only {len(routed)} neighbours; masking with fewer "
                                f"than threshold {self.params.threshold} - 1 peers would expose its input")
        for sender, sealed in routed.items():
            key = _cipher_key(self._cipher_sk, self.peer_keys[sender][0], self.session, self.round, self.id, sender)
            try:
                plain = crypto.open_sealed(key, sealed, _share_aad(self.session, self.round, sender, self.id))
                u, v, seed_share, key_share = msgpack.unpackb(plain, raw=False)
            except (crypto.DecryptionError, ValueError, TypeError) as err:
                raise ProtocolError(f"client {self.id}: the share from {sender} does not decrypt: {err}") from None
            if (u, v) != (sender, self.id):
                raise ProtocolError(f"client {self.id}: share routed from {sender} names {u} -> {v}")
            if not (is_share(seed_share) and is_share(key_share)):
                raise ProtocolError(f"client {self.id}: the share from {sender} is not an (index, 32 bytes) pair")
            my_index = share_holders(sender, self.graph).index(self.id) + 1
            if seed_share[0] != my_index or key_share[0] != my_index:
                raise ProtocolError(f"client {self.id}: the share from {sender} carries index "
                                    f"{seed_share[0]}/{key_share[0]}, expected {my_index}")
            self.held[sender] = (tuple(seed_share), tuple(key_share))
        self.sharers = set(routed)
        y, self._words = self._words.copy(), None  # the unmasked vector is not kept past this point
        stream = MaskStream()
        stream.add(y, self._seed)
        for peer in sorted(self.sharers):
            seed = _mask_seed(self._mask_sk, self.peer_keys[peer][1], self.session, self.round, self.id, peer)
            stream.add(y, seed, subtract=self.id > peer)
        self.stage = ClientStage.AWAIT_CONSISTENCY if self.params.consistency else ClientStage.AWAIT_UNMASK
        return self._send(T.MASKED_INPUT, {"vector": pack(y, self.params.word_bits)})

    def _on_consistency(self, raw: bytes) -> bytes:
        survived = self._expect(raw, T.CONSISTENCY_REQUEST, self.max_bytes).body["survived"]
        self._check_survivors(survived, local=False)
        self.signed_survivors = sorted(survived)
        signature = self._identity.sign(_transcript(b"survivors", self.session, self.round, self.signed_survivors))
        self.stage = ClientStage.AWAIT_UNMASK
        return self._send(T.CONSISTENCY_SIGNATURE, {"signature": signature})

    def _on_unmask(self, raw: bytes) -> bytes:
        body = self._expect(raw, T.UNMASK_REQUEST, self.max_bytes).body
        survived, dropped = set(body["survived"]), set(body["dropped"])
        if survived & dropped:
            raise ProtocolError(f"client {self.id}: the server lists {sorted(survived & dropped)} as both dropped "
                                "and survived; refusing to reveal both shares")
        self._check_survivors(body["survived"], local=True)
        if not dropped <= self.sharers:
            raise ProtocolError(f"client {self.id}: 'dropped' names clients that never shared keys with it")
        if self.params.consistency:
            if survived != set(self.signed_survivors) & (self.sharers | {self.id}):
                raise ProtocolError(f"client {self.id}: the survivor list differs from the one it signed")
            valid = sum(self._is_valid(peer, sig, _transcript(b"survivors", self.session, self.round,
                                                             self.signed_survivors))
                        for peer, sig in body["signatures"].items() if peer in self.signed_survivors)
            if valid < self.params.threshold:
                raise ProtocolError(f"client {self.id}: only {valid} valid survivor signatures, need "
                                    f"{self.params.threshold}")
        seed_shares = {p: list(self.held[p][0]) for p in sorted(survived) if p in self.held}
        key_shares = {p: list(self.held[p][1]) for p in sorted(dropped)}
        self.revealed = {**{p: "seed" for p in seed_shares}, **{p: "key" for p in key_shares}}
        self.stage = ClientStage.DONE
        return self._send(T.UNMASK_SHARES, {"seed_shares": seed_shares, "key_shares": key_shares})

    # ------------------------------------------------------------ checks
    def _check_survivors(self, survived: list[int], local: bool) -> None:
        """``local``: the list is this client's neighbourhood (unmask request), else the global list (to sign)."""
        alive = set(survived)
        if self.id not in alive:
            raise ProtocolError(f"client {self.id}: not in the survivor list it was sent")
        if local and not alive - {self.id} <= self.sharers:
            raise ProtocolError(f"client {self.id}: 'survived' names clients that never shared keys with it")
        if not alive <= set(self.params.participants):
            raise ProtocolError(f"client {self.id}: 'survived' names clients outside the round")
        live_holders = len(alive & (self.sharers | {self.id}))
        if live_holders < self.params.threshold:
            raise ProtocolError(f"client {self.id}: only {live_holders} of its share holders survived, "
                                f"threshold {self.params.threshold}")

    def _is_valid(self, peer: int, signature: bytes, data: bytes) -> bool:
        public = self._directory.get(peer)
        if public is None:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def _verify(self, peer: int, signature: bytes, data: bytes) -> None:
        if not self._is_valid(peer, signature, data):
            raise ProtocolError(f"client {self.id}: the keys of client {peer} carry no valid signature")


class ServerStage(enum.Enum):
    ADVERTISE_KEYS = T.ADVERTISE_KEYS
    SHARE_KEYS = T.SHARE_KEYS
    MASKED_INPUT = T.MASKED_INPUT
    CONSISTENCY = T.CONSISTENCY_SIGNATURE
    UNMASK = T.UNMASK_SHARES
    DONE = None


STAGE_WORK = {ServerStage.ADVERTISE_KEYS: "advertised keys", ServerStage.SHARE_KEYS: "shared keys",
              ServerStage.MASKED_INPUT: "sent masked input", ServerStage.CONSISTENCY: "signed the survivor list"}


@dataclass
class ServerOutcome:
    total: np.ndarray  # sum of the survivors' inputs mod 2^k
    contributors: tuple[int, ...]
    recovered_dropouts: tuple[int, ...]  # clients whose pairwise masks were removed from their shared key


@dataclass
class SecAggServer:
    """The server's side of one round. It sees masked vectors only and keeps just their running sum."""

    params: RoundParameters
    stage: ServerStage = ServerStage.ADVERTISE_KEYS
    timer: CryptoTimer = field(default_factory=CryptoTimer)

    def __post_init__(self) -> None:
        p = self.params
        self.graph = neighbour_graph(list(p.participants), p.degree, p.session)
        self.holders = {c: share_holders(c, self.graph) for c in p.participants}
        self.max_bytes = max_message_bytes(p)
        self.inbox: dict[int, dict] = {}
        self.alive: set[int] = set(p.participants)
        self.keys: dict[int, tuple[bytes, bytes, bytes]] = {}
        self.shared: set[int] = set()
        self.masked_sum: np.ndarray | None = None
        self.masked: set[int] = set()
        self.signatures: dict[int, bytes] = {}
        self.responses: dict[int, dict] | None = None  # the unmask replies, once the last stage has closed

    def _send(self, kind: MessageType, body: dict) -> bytes:
        return encode(Message(kind, self.params.session, self.params.round, SERVER, body))

    def setup_messages(self) -> dict[int, bytes]:
        p = self.params
        body = {"participants": list(p.participants), "degree": p.degree, "threshold": p.threshold,
                "word_bits": p.word_bits, "length": p.length, "consistency": p.consistency,
                "context": p.context}
        return {c: self._send(T.SETUP, body) for c in p.participants}

    def receive(self, sender: int, raw: bytes) -> None:
        """Accept one client's message for the current stage; ProtocolError if it does not belong here."""
        if self.stage is ServerStage.DONE:
            raise ProtocolError("the round is over; no further message is accepted")
        with self.timer.measure():
            message = decode(raw, max_bytes=self.max_bytes, session=self.params.session,
                             round_idx=self.params.round, sender=sender, allowed=(self.stage.value,))
            if sender not in self.alive:
                raise ProtocolError(f"client {sender} is not (or no longer) part of this round")
            if sender in self.inbox:
                raise ProtocolError(f"a second {message.type.name} from client {sender} (replay)")
            self._check_body(sender, message)
            if message.type is T.MASKED_INPUT:  # fold in at once: no individual vector is kept
                vector = unpack(message.body["vector"], self.params.word_bits, self.params.length)
                if self.masked_sum is None:
                    self.masked_sum = vector.copy()
                else:
                    np.add(self.masked_sum, vector, out=self.masked_sum)
                self.inbox[sender] = {}
            else:
                self.inbox[sender] = message.body

    def _check_body(self, sender: int, message: Message) -> None:
        body, p = message.body, self.params
        if message.type is T.SHARE_KEYS:
            expected = set(self.graph[sender]) & set(self.keys)
            if set(body["shares"]) != expected:
                raise ProtocolError(f"client {sender} sent shares for {sorted(body['shares'])}, "
                                    f"its live neighbours are {sorted(expected)}")
        elif message.type is T.MASKED_INPUT:
            if len(body["vector"]) != packed_size(p.length, p.word_bits):
                raise ProtocolError(f"client {sender}'s masked vector has {len(body['vector'])} bytes, "
                                    f"expected {packed_size(p.length, p.word_bits)}")
        elif message.type is T.UNMASK_SHARES:
            for kind in ("seed_shares", "key_shares"):
                for owner, (index, _) in body[kind].items():
                    holders = self.holders.get(owner, ()) if owner in self.shared else ()
                    if sender not in holders or index != holders.index(sender) + 1:
                        raise ProtocolError(f"client {sender} sent a share of {owner} it cannot hold")
            if set(body["seed_shares"]) & set(body["key_shares"]):
                raise ProtocolError(f"client {sender} revealed both shares of the same client")

    def advance(self) -> dict[int, bytes]:
        """Close the current stage (whoever has not answered has dropped) and return the next messages."""
        with self.timer.measure():
            responded = sorted(self.inbox)
            self.inbox, inbox = {}, self.inbox
            if self.stage in STAGE_WORK:  # every stage but the last needs t clients to go on
                self._require(len(responded), STAGE_WORK[self.stage])
                self.alive = set(responded)
            if self.stage is ServerStage.ADVERTISE_KEYS:
                self.keys = {c: (inbox[c]["cipher_key"], inbox[c]["mask_key"], inbox[c]["signature"]) for c in responded}
                self.stage = ServerStage.SHARE_KEYS
                return {c: self._send(T.PEER_KEYS, {"peers": {v: list(self.keys[v]) for v in self.graph[c]
                                                               if v in self.keys}}) for c in responded}
            if self.stage is ServerStage.SHARE_KEYS:
                self.shared = set(responded)
                self.stage = ServerStage.MASKED_INPUT
                return {c: self._send(T.ROUTED_SHARES, {"shares": {u: inbox[u]["shares"][c] for u in self.graph[c]
                                                                    if u in inbox and c in inbox[u]["shares"]}})
                        for c in responded}
            if self.stage is ServerStage.MASKED_INPUT:
                self.masked = set(responded)
                if self.params.consistency:
                    self.stage = ServerStage.CONSISTENCY
                    return {c: self._send(T.CONSISTENCY_REQUEST, {"survived": sorted(self.masked)})
                            for c in responded}
                self.stage = ServerStage.UNMASK
                return self._unmask_requests(responded)
            if self.stage is ServerStage.CONSISTENCY:
                self.signatures = {c: inbox[c]["signature"] for c in responded}
                self.stage = ServerStage.UNMASK
                return self._unmask_requests(responded)
            if self.stage is ServerStage.UNMASK:
                self.responses = inbox
                self.stage = ServerStage.DONE
                return {}
            raise ProtocolError("the round is over")

    def _require(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            self.stage = ServerStage.DONE
            raise RoundAborted(f"only {count} clients {what}; the threshold is {self.params.threshold}")

    def _survivors_of(self, client: int) -> list[int]:
        return sorted(v for v in (*self.graph[client], client) if v in self.masked)

    def _unmask_requests(self, recipients: list[int]) -> dict[int, bytes]:
        out = {}
        signatures = {v: s for v, s in self.signatures.items() if v in self.masked}
        for c in recipients:
            neighbourhood = set(self.graph[c]) & self.shared
            dropped = sorted(neighbourhood - self.masked)
            out[c] = self._send(T.UNMASK_REQUEST, {"survived": self._survivors_of(c), "dropped": dropped,
                                                   "signatures": signatures})
        return out

    def result(self) -> ServerOutcome:
        """Remove the masks from the running sum; RoundAborted if any needed secret lacks t shares."""
        if self.responses is None:
            raise ProtocolError("the round has not reached its end")
        with self.timer.measure():
            t = self.params.threshold
            seed_shares: dict[int, list] = {}
            key_shares: dict[int, list] = {}
            for body in self.responses.values():
                for owner, share in body["seed_shares"].items():
                    seed_shares.setdefault(owner, []).append((share[0], bytes(share[1])))
                for owner, share in body["key_shares"].items():
                    key_shares.setdefault(owner, []).append((share[0], bytes(share[1])))
            dropped = sorted(self.shared - self.masked)
            short = [c for c in self.masked if len(seed_shares.get(c, ())) < t] + \
                    [c for c in dropped if len(key_shares.get(c, ())) < t]
            if short:
                raise RoundAborted(f"fewer than {t} shares arrived to unmask clients {sorted(short)}")
            total = self.masked_sum.copy()
            stream = MaskStream()
            seeds = combine_many({c: seed_shares[c] for c in self.masked}, t)  # every client at once
            keys = combine_many({u: key_shares[u] for u in dropped}, t)
            for c in sorted(self.masked):
                stream.add(total, seeds[c], subtract=True)
            for u in dropped:
                mask_sk = crypto.private_from_bytes(keys[u])
                if crypto.public_bytes(mask_sk) != self.keys[u][1]:
                    raise RoundAborted(f"the shares of client {u}'s key do not rebuild the key it advertised")
                for v in sorted(set(self.graph[u]) & self.masked):
                    try:
                        seed = _mask_seed(mask_sk, self.keys[v][1], self.params.session, self.params.round, u, v)
                    except crypto.KeyAgreementError as err:
                        raise RoundAborted(f"cannot rebuild the mask between {u} and {v}: {err}") from None
                    # v added +mask if v < u, -mask otherwise; undo it
                    stream.add(total, seed, subtract=v < u)
            return ServerOutcome(total=reduce(total, self.params.word_bits), contributors=tuple(sorted(self.masked)),
                                 recovered_dropouts=tuple(dropped))
