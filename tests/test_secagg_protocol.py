"""SecAgg / SecAgg+: the masked sum is the plain sum, dropouts are recovered, too many abort, bytes are checked."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from secagg_helpers import make_round, plain_sum, run

from privfed.config import DropoutStage
from privfed.secure.graph import neighbour_graph, share_holders, suggested_degree, threshold_for
from privfed.secure.messages import MessageType, ProtocolError, decode
from privfed.secure.secagg import RoundAborted
from privfed.secure.wire import container_dtype, packed_size, unpack

STAGES = list(DropoutStage)


@st.composite
def rounds(draw):
    n = draw(st.integers(2, 9))
    d = draw(st.integers(1, 40))
    degree = draw(st.sampled_from([0] + [k for k in (2, 4, 6) if k < n - 1]))
    fraction = draw(st.sampled_from([0.51, 0.6, 0.75, 1.0]))
    word_bits = draw(st.sampled_from([4, 5, 8, 12, 31, 32, 33, 64]))  # masks and sums live in Z_2^k
    dropped = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    stages = {c: draw(st.sampled_from(STAGES)) for c in dropped}
    consistency = draw(st.booleans())
    seed = draw(st.integers(0, 1000))
    return n, d, degree, fraction, word_bits, stages, consistency, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_masked_sum_equals_plain_sum_of_contributors_or_aborts(case):
    n, d, degree, fraction, word_bits, stages, consistency, seed = case
    server, clients, inputs = make_round(n, d, degree=degree, fraction=fraction, word_bits=word_bits,
                                         consistency=consistency, seed=seed)
    sent_input = [c for c in range(n) if stages.get(c) not in (DropoutStage.ADVERTISE_KEYS,
                                                                 DropoutStage.SHARE_KEYS, DropoutStage.MASKED_INPUT)]
    t = server.params.threshold
    alive_after = [n - sum(1 for s in stages.values() if STAGES.index(s) <= i) for i in range(len(STAGES))]
    must_complete = min(alive_after) >= t  # complete graph: every secret is held by everyone
    try:
        outcome, _ = run(server, clients, stages)
    except RoundAborted:
        assert stages, "a round in which nobody dropped aborted"
        assert not (degree == 0 and must_complete), "aborted although every stage kept >= t clients"
        return
    if degree == 0:
        assert must_complete, "completed although some stage fell below the threshold"
        assert outcome.contributors == tuple(sent_input)
    else:  # on a sparse ring a client whose neighbours all dropped cannot share its secrets and leaves the round
        assert set(outcome.contributors) <= set(sent_input)
    np.testing.assert_array_equal(outcome.total.astype(np.uint64),
                                  plain_sum(inputs, outcome.contributors, word_bits))


def test_no_dropout_round_always_completes_and_recovers_dropped_masks():
    server, clients, inputs = make_round(10, 500, degree=4)
    stages = {3: DropoutStage.MASKED_INPUT, 7: DropoutStage.UNMASKING}
    outcome, log = run(server, clients, stages)
    assert outcome.recovered_dropouts == (3,)  # its pairwise masks were rebuilt from its shared key
    assert 7 in outcome.contributors and 3 not in outcome.contributors
    np.testing.assert_array_equal(outcome.total.astype(np.uint64), plain_sum(inputs, outcome.contributors))
    assert set(log.dropped) == {3, 7}


def test_thirty_percent_dropping_after_masking_completes():
    server, clients, inputs = make_round(10, 200)
    outcome, _ = run(server, clients, {c: DropoutStage.UNMASKING for c in (1, 4, 8)})
    assert outcome.contributors == tuple(range(10))
    np.testing.assert_array_equal(outcome.total.astype(np.uint64), plain_sum(inputs, range(10)))


def test_below_threshold_aborts_and_releases_nothing():
    server, clients, _ = make_round(5, 50, fraction=0.6)  # t = 3
    with pytest.raises(RoundAborted, match="threshold"):
        run(server, clients, {c: DropoutStage.MASKED_INPUT for c in (0, 1, 2)})
    with pytest.raises(ProtocolError):
        server.result()


@pytest.mark.parametrize("word_bits", [32, 6])
def test_single_masked_vector_is_uniform_and_the_check_catches_skipped_masking(word_bits):
    """All-zero inputs are as structured as inputs get; what the server receives must look uniform anyway, at full
    words and at bit-packed 6-bit words (masks reduced modulo 2^6)."""
    d = 40_000
    zeros = {c: np.zeros(d, dtype=container_dtype(word_bits)) for c in range(3)}
    server, clients, _ = make_round(3, d, inputs=zeros, word_bits=word_bits)
    received = {}
    original = server.receive

    def spy(sender, raw):
        received.setdefault(decode(raw, max_bytes=server.max_bytes, session=server.params.session,
                                   round_idx=1).type, []).append(raw)
        original(sender, raw)

    server.receive = spy
    run(server, clients)
    one = decode(received[MessageType.MASKED_INPUT][0], max_bytes=server.max_bytes, session=server.params.session,
                 round_idx=1)
    assert len(one.body["vector"]) == packed_size(d, word_bits)  # k bits a value on the wire, not a 32-bit word
    words = unpack(one.body["vector"], word_bits, d)

    def uniform_p(values):
        bins = min(word_bits, 8)  # the top byte (or every bit of a narrow word): up to 256 bins
        counts = np.bincount((values.astype(np.uint64) >> np.uint64(word_bits - bins)).astype(np.int64),
                             minlength=1 << bins)
        return stats.chisquare(counts).pvalue

    assert uniform_p(words) > 1e-6
    assert uniform_p(zeros[0]) < 1e-6  # the same test rejects an unmasked vector: it can fail


def test_server_never_holds_an_unmasked_vector():
    d = 4096
    server, clients, inputs = make_round(4, d, seed=3)
    seen: list[bytes] = []
    original = server.receive
    server.receive = lambda sender, raw: (seen.append(raw), original(sender, raw))[1]
    outcome, _ = run(server, clients)
    for c, words in inputs.items():
        window = words[1000:1016].tobytes()  # 64 bytes of the client's plaintext
        assert not any(window in raw for raw in seen), f"client {c}'s plaintext reached the server"
    held = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
    assert len(held) == 1  # only the running masked sum
    for words in inputs.values():
        assert not np.array_equal(held[0], words)
    np.testing.assert_array_equal(outcome.total.astype(np.uint64), plain_sum(inputs, range(4)))


def test_client_refuses_to_reveal_both_shares_of_a_peer():
    server, clients, _ = make_round(4, 8)
    outgoing = server.setup_messages()
    for _ in range(3):  # setup, peer keys, routed shares
        for c, raw in outgoing.items():
            server.receive(c, clients[c].handle(raw))
        outgoing = server.advance()
    # a cheating server lists client 1 as both dropped and survived
    from privfed.secure.messages import SERVER, Message, encode
    cheat = encode(Message(MessageType.UNMASK_REQUEST, server.params.session, 1, SERVER,
                           {"survived": [0, 1, 2, 3], "dropped": [1], "signatures": {}}))
    with pytest.raises(ProtocolError, match="both dropped and survived"):
        clients[0].handle(cheat)
    assert clients[0].revealed == {}


def test_sparse_graph_is_symmetric_regular_and_cheaper():
    ids = list(range(100))
    k = suggested_degree(100)
    graph = neighbour_graph(ids, k, b"s" * 16)
    assert k == 14
    assert all(len(v) == k for v in graph.values())
    assert all(a in graph[b] for a in graph for b in graph[a])
    assert neighbour_graph(ids, k, b"t" * 16) != graph  # the ring order comes from the session
    assert len(share_holders(5, graph)) == k + 1
    assert threshold_for(k + 1, 0.6) == 9
    complete = neighbour_graph(list(range(5)), 0, b"s" * 16)
    assert all(len(v) == 4 for v in complete.values())
