"""Malformed, replayed, out-of-order and oversized messages are rejected with ProtocolError, never a crash."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_helpers import make_round

from privfed.secure.messages import SERVER, Message, MessageType, ProtocolError, encode


def advance_to_masking():
    """A round whose clients have just been sent their routed shares; returns (server, clients, next messages)."""
    server, clients, _ = make_round(4, 16)
    outgoing = server.setup_messages()
    replies = {}
    for _ in range(2):
        replies = {c: clients[c].handle(raw) for c, raw in outgoing.items()}
        for c, raw in replies.items():
            server.receive(c, raw)
        outgoing = server.advance()
    return server, clients, outgoing, replies


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected_cleanly(raw):
    server, clients, _ = make_round(3, 4)
    with pytest.raises(ProtocolError):
        clients[0].handle(raw)
    with pytest.raises(ProtocolError):
        server.receive(0, raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_messages_are_rejected_or_handled(data):
    _server, clients, outgoing, _ = advance_to_masking()
    raw = bytearray(outgoing[0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        clients[0].handle(bytes(raw))
    except ProtocolError:
        pass  # anything else (KeyError, ValueError, ...) fails the test


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.binary(max_size=40) |
                    st.text(max_size=10), lambda inner: st.lists(inner, max_size=5) |
                    st.dictionaries(st.integers(-3, 10) | st.text(max_size=8), inner, max_size=5), max_leaves=20))
def test_well_formed_msgpack_with_wrong_structure_is_rejected(payload):
    server, clients, _ = make_round(3, 4)
    raw = msgpack.packb([1, 2, server.params.session, 1, 0, payload], use_bin_type=True)
    with pytest.raises(ProtocolError):
        server.receive(0, raw)  # wrong body for ADVERTISE_KEYS
    raw = msgpack.packb([1, 1, server.params.session, 1, SERVER, payload], use_bin_type=True)
    with pytest.raises(ProtocolError):
        clients[0].handle(raw)  # wrong body for SETUP


def test_replay_out_of_order_oversized_and_foreign_round():
    server, clients, outgoing, replies = advance_to_masking()
    with pytest.raises(ProtocolError, match="out-of-order"):
        server.receive(0, replies[0])  # SHARE_KEYS again while the server waits for masked input
    masked = clients[0].handle(outgoing[0])
    server.receive(0, masked)
    with pytest.raises(ProtocolError, match="replay"):
        server.receive(0, masked)
    with pytest.raises(ProtocolError, match="out-of-order"):
        clients[0].handle(outgoing[0])  # the routed shares again, while the client awaits the unmask request
    with pytest.raises(ProtocolError, match="out-of-order"):
        clients[1].handle(encode(Message(MessageType.SETUP, server.params.session, 1, SERVER,
                                         {"participants": [0, 1], "degree": 0, "threshold": 2, "word_bits": 32,
                                          "length": 16, "consistency": False, "context": b""})))
    big = encode(Message(MessageType.MASKED_INPUT, server.params.session, 1, 1,
                         {"vector": bytes(server.max_bytes + 1)}))
    with pytest.raises(ProtocolError, match="exceeds"):
        server.receive(1, big)
    foreign = encode(Message(MessageType.MASKED_INPUT, server.params.session, 2, 1,
                             {"vector": np.zeros(16, np.uint32).tobytes()}))
    with pytest.raises(ProtocolError, match="round 2"):
        server.receive(1, foreign)
    other_session = encode(Message(MessageType.MASKED_INPUT, b"x" * 16, 1, 1,
                                   {"vector": np.zeros(16, np.uint32).tobytes()}))
    with pytest.raises(ProtocolError, match="another session"):
        server.receive(1, other_session)
    spoofed = clients[2].handle(outgoing[2])
    with pytest.raises(ProtocolError, match="claims sender"):
        server.receive(3, spoofed)  # client 2's message arriving on client 3's channel
    short = encode(Message(MessageType.MASKED_INPUT, server.params.session, 1, 3, {"vector": bytes(8)}))
    with pytest.raises(ProtocolError, match="expected 64"):
        server.receive(3, short)


def test_tampered_share_is_detected():
    server, clients, _ = make_round(3, 4)
    outgoing = server.setup_messages()
    for c, raw in outgoing.items():
        server.receive(c, clients[c].handle(raw))
    outgoing = server.advance()
    for c, raw in outgoing.items():
        server.receive(c, clients[c].handle(raw))
    outgoing = server.advance()
    body = msgpack.unpackb(outgoing[0], raw=False, strict_map_key=False)[5]
    sender = next(iter(body["shares"]))
    sealed = bytearray(body["shares"][sender])
    sealed[-1] ^= 1
    body["shares"][sender] = bytes(sealed)
    tampered = encode(Message(MessageType.ROUTED_SHARES, server.params.session, 1, SERVER, body))
    with pytest.raises(ProtocolError, match="does not decrypt"):
        clients[0].handle(tampered)


def _through_consistency(n: int = 4):
    """A consistency-checked round up to the moment the server sends its unmask requests."""
    server, clients, _ = make_round(n, 8, consistency=True)
    outgoing = server.setup_messages()
    for _ in range(4):  # setup, peer keys, routed shares, consistency request
        for c, raw in outgoing.items():
            server.receive(c, clients[c].handle(raw))
        outgoing = server.advance()
    return server, clients, outgoing


def test_consistency_check_refuses_an_altered_survivor_list_or_forged_signatures():
    server, clients, _ = _through_consistency()
    altered = encode(Message(MessageType.UNMASK_REQUEST, server.params.session, 1, SERVER,
                             {"survived": [0, 1, 2], "dropped": [3],
                              "signatures": dict(server.signatures)}))
    with pytest.raises(ProtocolError, match="differs from the one it signed"):
        clients[0].handle(altered)
    forged = encode(Message(MessageType.UNMASK_REQUEST, server.params.session, 1, SERVER,
                            {"survived": [0, 1, 2, 3], "dropped": [],
                             "signatures": {c: bytes(64) for c in range(4)}}))
    with pytest.raises(ProtocolError, match="valid survivor signatures"):
        clients[1].handle(forged)
    assert clients[0].revealed == {} and clients[1].revealed == {}


def test_client_refuses_a_minority_threshold_from_the_server():
    server, clients, _ = make_round(5, 4)
    weak = encode(Message(MessageType.SETUP, server.params.session, 1, SERVER,
                          {"participants": [0, 1, 2, 3, 4], "degree": 0, "threshold": 2, "word_bits": 32,
                           "length": 4, "consistency": False, "context": b""}))
    with pytest.raises(ProtocolError, match="not a majority"):
        clients[0].handle(weak)


def test_client_refuses_to_mask_with_too_few_peers():
    """A server that withholds every routed share would otherwise learn x from the self-mask seed alone."""
    server, clients, _outgoing, _ = advance_to_masking()
    empty = encode(Message(MessageType.ROUTED_SHARES, server.params.session, 1, SERVER, {"shares": {}}))
    with pytest.raises(ProtocolError, match="would expose its input"):
        clients[0].handle(empty)


def test_hostile_setup_and_keys_raise_protocol_errors():
    server, clients, _ = make_round(4, 4)
    odd = encode(Message(MessageType.SETUP, server.params.session, 1, SERVER,
                         {"participants": [0, 1, 2, 3], "degree": 1, "threshold": 3, "word_bits": 32,
                          "length": 4, "consistency": False, "context": b""}))
    with pytest.raises(ProtocolError, match="odd"):
        clients[0].handle(odd)
    clients[1].handle(server.setup_messages()[1])
    low_order = {p: [bytes(32) if p == 0 else bytes([p]) * 32, bytes([p + 100]) * 32, b""]
                 for p in (0, 2, 3)}  # peer 0 advertises the all-zero X25519 point
    bad_keys = encode(Message(MessageType.PEER_KEYS, server.params.session, 1, SERVER, {"peers": low_order}))
    with pytest.raises(ProtocolError, match="key agreement failed"):
        clients[1].handle(bad_keys)
