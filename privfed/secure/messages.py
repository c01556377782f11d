"""The secure-aggregation wire format (SecAgg and Paillier): typed messages <-> bytes (msgpack), with every field checked on the way in.

A message is ``[version, type, session, round, sender, body]``. Decoding refuses, with a :class:`ProtocolError`
that says why, anything oversized (checked before parsing), malformed, of another protocol version, session or
round (a replay from elsewhere), or with a body whose fields are missing, extra, or of the wrong type or size.
Which message is *expected next* is the state machines' business (``secagg.py``); this module only guarantees that
what reaches them is well-formed.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgpack

from privfed.errors import PrivfedError

VERSION = 1
SERVER = -1  # the sender id of messages from the server
SESSION_BYTES = 16


class ProtocolError(PrivfedError):
    """A message was rejected (malformed, oversized, replayed, out of order, or failed a protocol check)."""


class MessageType(enum.IntEnum):
    SETUP = 1  # server -> client: round parameters and the participants
    ADVERTISE_KEYS = 2  # client -> server: two X25519 public keys (and a signature when checking consistency)
    PEER_KEYS = 3  # server -> client: the neighbours' advertised keys
    SHARE_KEYS = 4  # client -> server: AES-GCM-encrypted Shamir shares, one per neighbour
    ROUTED_SHARES = 5  # server -> client: the shares its neighbours encrypted to it
    MASKED_INPUT = 6  # client -> server: the masked vector
    CONSISTENCY_REQUEST = 7  # server -> client: the survivor list to sign (optional round)
    CONSISTENCY_SIGNATURE = 8  # client -> server: Ed25519 signature of the survivor list
    UNMASK_REQUEST = 9  # server -> client: who survived, who dropped (and the signatures)
    UNMASK_SHARES = 10  # client -> server: self-mask seed shares of survivors, key shares of the dropped
    PAILLIER_INPUT = 11  # client -> server: a packed, Paillier-encrypted vector
    PAILLIER_SUM = 12  # server -> decrypting client: the product of the inputs' ciphertexts (the encrypted sum)
    INPUT_REQUEST = 13  # server -> client (paillier): the round is open, send your input
    PAILLIER_DECRYPTED = 14  # decrypting client -> server: the plaintext sum of the contributors' inputs


@dataclass(frozen=True)
class Message:
    type: MessageType
    session: bytes
    round: int
    sender: int
    body: dict


# ---------------------------------------------------------------- field checks

Check = Callable[[Any], bool]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_bytes(size: int | None = None) -> Check:
    return lambda v: isinstance(v, bytes) and (size is None or len(v) == size)


def is_float(value: Any) -> bool:
    return isinstance(value, float)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_int(v) for v in value) and len(set(value)) == len(value)


def is_map_of(value_check: Check) -> Check:
    return lambda v: isinstance(v, dict) and all(is_int(k) and value_check(x) for k, x in v.items())


def is_share(value: Any) -> bool:
    """A Shamir share as sent: [index, 32 bytes]."""
    return isinstance(value, list) and len(value) == 2 and is_int(value[0]) and is_bytes(32)(value[1])


def is_keys(value: Any) -> bool:
    """Advertised keys as routed: [cipher public key, mask public key, signature]."""
    return (isinstance(value, list) and len(value) == 3 and is_bytes(32)(value[0]) and is_bytes(32)(value[1])
            and is_bytes()(value[2]))


SCHEMAS: dict[MessageType, dict[str, Check]] = {
    MessageType.SETUP: {"participants": is_int_list, "degree": is_int, "threshold": is_int, "word_bits": is_int,
                        "length": is_int, "consistency": is_bool, "context": is_bytes()},
    MessageType.ADVERTISE_KEYS: {"cipher_key": is_bytes(32), "mask_key": is_bytes(32), "signature": is_bytes()},
    MessageType.PEER_KEYS: {"peers": is_map_of(is_keys)},
    MessageType.SHARE_KEYS: {"shares": is_map_of(is_bytes())},
    MessageType.ROUTED_SHARES: {"shares": is_map_of(is_bytes())},
    MessageType.MASKED_INPUT: {"vector": is_bytes()},
    MessageType.CONSISTENCY_REQUEST: {"survived": is_int_list},
    MessageType.CONSISTENCY_SIGNATURE: {"signature": is_bytes(64)},
    MessageType.UNMASK_REQUEST: {"survived": is_int_list, "dropped": is_int_list,
                                 "signatures": is_map_of(is_bytes(64))},
    MessageType.UNMASK_SHARES: {"seed_shares": is_map_of(is_share), "key_shares": is_map_of(is_share)},
    MessageType.PAILLIER_INPUT: {"key": is_bytes(32), "length": is_int, "value_bits": is_int, "slot_bits": is_int,
                                 "slots": is_int, "ciphertexts": is_bytes()},
    MessageType.PAILLIER_SUM: {"key": is_bytes(32), "length": is_int, "value_bits": is_int, "slot_bits": is_int,
                               "slots": is_int, "ciphertexts": is_bytes(), "contributors": is_int_list},
    MessageType.INPUT_REQUEST: {},
    MessageType.PAILLIER_DECRYPTED: {"sum": is_bytes(), "contributors": is_int_list},
}


def encode(message: Message) -> bytes:
    return msgpack.packb([VERSION, int(message.type), message.session, message.round, message.sender,
                          message.body], use_bin_type=True)


def decode(raw: bytes, *, max_bytes: int, session: bytes | None, round_idx: int,
           sender: int | None = None, allowed: Collection[MessageType] | None = None) -> Message:
    """Parse and check one message. ``sender``: who the channel says sent it (must match the envelope).

    ``session=None`` is for the message that opens a round on a client: the server chose the session id, so any
    well-formed one (``SESSION_BYTES`` bytes) is accepted and returned in the message for the client to hold to.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ProtocolError(f"a message must be bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise ProtocolError(f"message of {len(raw):,} bytes exceeds the {max_bytes:,}-byte limit for this stage")
    try:
        envelope = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=False, use_list=True,
                                   max_bin_len=max_bytes, max_str_len=1024, max_array_len=1 << 20,
                                   max_map_len=1 << 20)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as err:  # all mean "malformed"
        raise ProtocolError(f"malformed message: {type(err).__name__}: {err}") from None
    if not (isinstance(envelope, list) and len(envelope) == 6):
        raise ProtocolError("malformed message: expected [version, type, session, round, sender, body]")
    version, kind, msg_session, msg_round, msg_sender, body = envelope
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (this is version {VERSION})")
    try:
        kind = MessageType(kind)
    except (ValueError, TypeError):
        raise ProtocolError(f"unknown message type {kind!r}") from None
    if allowed is not None and kind not in allowed:
        expected = ", ".join(t.name for t in allowed)
        raise ProtocolError(f"out-of-order message: got {kind.name}, expected {expected}")
    if session is None and not is_bytes(SESSION_BYTES)(msg_session):
        raise ProtocolError(f"{kind.name} carries no {SESSION_BYTES}-byte session id")
    if session is not None and msg_session != session:
        raise ProtocolError(f"{kind.name} belongs to another session (replayed or misrouted)")
    if msg_round != round_idx:
        raise ProtocolError(f"{kind.name} is for round {msg_round!r}, this is round {round_idx} (replayed?)")
    if not is_int(msg_sender) or (sender is not None and msg_sender != sender):
        raise ProtocolError(f"{kind.name} claims sender {msg_sender!r} but arrived from {sender}")
    schema = SCHEMAS[kind]
    if not isinstance(body, dict) or set(body) != set(schema):
        raise ProtocolError(f"malformed {kind.name}: fields must be exactly {sorted(schema)}")
    for name, check in schema.items():
        if not check(body[name]):
            raise ProtocolError(f"malformed {kind.name}: bad field {name!r}")
    return Message(kind, msg_session, msg_round, msg_sender, body)
