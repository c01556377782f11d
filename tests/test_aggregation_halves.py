"""The client and server halves: bytes only, no individual update on the server, keys before the update, state
that survives a new process per message."""
from __future__ import annotations

import types

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfed.aggregation import InProcessTransport, Transport, run_protocol
from privfed.aggregation.paillier import PaillierBackend
from privfed.aggregation.secagg import SecAggBackend
from privfed.config import Aggregation, AggregationConfig
from privfed.secure import paillier as paillier_module
from privfed.secure.encoding import FixedPointEncoding
from privfed.secure.messages import ProtocolError
from privfed.secure.paillier_keys import PaillierKey
from privfed.secure.secagg import SecAggClient
from privfed.privacy.distributed import DistributedDp

LENGTH = 300


def _updates(n: int = 3) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    return {c: np.append(np.clip(rng.normal(0.1 * c, 0.05, LENGTH - 1), -1, 1), 1.0) for c in range(n)}


def _halfway(n: int) -> np.ndarray:
    """A fixed 'uniform' source: stochastic rounding becomes deterministic, so two runs give the same sum."""
    return np.full(n, 0.5)


@pytest.fixture(scope="module")
def paillier_backend():
    cfg = AggregationConfig(method=Aggregation.PAILLIER, key_bits=2048, workers=1)  # the smallest key allowed
    backend = PaillierBackend(cfg, 3, LENGTH, [0, 1, 2], uniform=_halfway)
    yield backend
    backend.close()


def _secagg_backend(**settings) -> SecAggBackend:
    return SecAggBackend(AggregationConfig(method=Aggregation.SECAGG, **settings), 3, LENGTH, uniform=_halfway)


def _reachable(root):
    """Every object reachable from ``root`` through attributes, dict keys and values, and sequence items."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType)):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, np.ndarray):
            stack.extend(vars(obj).values())


@pytest.mark.parametrize("method", [Aggregation.SECAGG, Aggregation.PAILLIER], ids=lambda m: m.value)
def test_the_server_half_holds_no_individual_update(method, paillier_backend, monkeypatch):
    """After a round, nothing reachable from the server half equals a client's update, in any encoding."""
    encoded: list = []  # every form a client's update takes on its way out: ints, words, plaintexts, ciphertexts
    quantise, set_words, encrypt = FixedPointEncoding.quantise, SecAggClient.set_words, paillier_module.encrypt_packed

    def spy_quantise(self, vector, uniform):
        ints, stats = quantise(self, vector, uniform)
        encoded.append(ints.copy())
        return ints, stats

    def spy_set_words(self, words):
        encoded.append(words.copy())
        set_words(self, words)

    def spy_encrypt(plaintexts, key, obfuscators):
        ciphertexts = encrypt(plaintexts, key, obfuscators)
        encoded.extend([list(plaintexts), list(ciphertexts)])
        return ciphertexts

    monkeypatch.setattr(FixedPointEncoding, "quantise", spy_quantise)
    monkeypatch.setattr(SecAggClient, "set_words", spy_set_words)
    monkeypatch.setattr("privfed.aggregation.paillier.encrypt_packed", spy_encrypt)
    backend = _secagg_backend() if method is Aggregation.SECAGG else paillier_backend
    updates = _updates()
    uploads: list[bytes] = []
    server = backend.server_half(1, sorted(updates))
    clients = {c: backend.client_half(1, c) for c in updates}
    outcome = run_protocol(server, InProcessTransport(clients, updates.get, tap=lambda _, raw: uploads.append(raw)))
    assert outcome.total is not None and len(encoded) >= 2 * len(updates)
    arrays = [*updates.values(), *(u.astype(np.float32) for u in updates.values()),
              *(e for e in encoded if isinstance(e, np.ndarray))]
    lists = [e for e in encoded if isinstance(e, list)]
    for obj in _reachable(server):
        assert not isinstance(obj, (Ed25519PrivateKey, X25519PrivateKey)), "the server half holds a private key"
        assert not (isinstance(obj, PaillierKey) and obj.has_private), "the server half holds the Paillier key pair"
        if isinstance(obj, np.ndarray):
            assert not any(obj.shape == a.shape and np.array_equal(obj, a) for a in arrays)
        elif isinstance(obj, list) and obj:
            assert not any(len(obj) == len(e) and all(int(x) == int(y) for x, y in zip(obj, e)) for e in lists)
        elif isinstance(obj, bytes) and len(obj) > 64:
            assert obj not in uploads, "the server half kept a client's upload"


def test_secagg_client_agrees_keys_before_its_update_exists_and_takes_the_session_from_setup():
    backend = _secagg_backend()
    server = backend.server_half(1, [0, 1, 2])
    other = backend.server_half(1, [0, 1, 2])
    assert server.server.params.session != other.server.params.session  # os.urandom per round
    clients = {c: backend.client_half(1, c) for c in range(3)}
    outgoing = server.open()
    for _ in range(2):  # SETUP, PEER_KEYS: no update anywhere yet
        assert not server.requests_input
        for c, raw in outgoing.items():
            server.receive(c, clients[c].handle(raw))
        outgoing = server.advance()
    assert clients[0].client.session == server.server.params.session
    assert server.requests_input  # the routed shares: the message whose reply carries the input
    with pytest.raises(ProtocolError, match="no vector to send"):
        clients[0].handle(outgoing[0])
    updates = _updates()
    for c, raw in outgoing.items():
        clients[c].set_update(updates[c])
        server.receive(c, clients[c].handle(raw))
    outgoing = server.advance()
    for c, raw in outgoing.items():
        server.receive(c, clients[c].handle(raw))
    assert server.advance() == {}
    outcome = server.outcome()
    np.testing.assert_allclose(outcome.total, sum(updates.values()), atol=3 * backend.encoding.step)


def test_a_secagg_client_may_have_its_update_before_setup():
    """Trained first: the noise share and the words wait for SETUP (the share depends on the participant count)."""
    backend = SecAggBackend(AggregationConfig(method=Aggregation.SECAGG), 3, LENGTH, DistributedDp(1.0, 0.5),
                            uniform=_halfway)
    updates = _updates()
    clients = {c: backend.client_half(1, c) for c in updates}
    for c, client in clients.items():
        client.set_update(updates[c])
    server = backend.server_half(1, sorted(updates))
    outgoing = server.open()
    while outgoing:  # no transport: nobody is handed an update again
        for c, raw in outgoing.items():
            server.receive(c, clients[c].handle(raw))
        outgoing = server.advance()
    outcome = server.outcome()
    assert outcome.details["abort_reason"] is None and outcome.noise is not None
    assert outcome.total[-1] == 3.0  # the count coordinate carries no noise
    noise_std = np.sqrt(2 * outcome.noise.client_mu * 3) * backend.encoding.step
    assert np.abs(outcome.total[:-1] - sum(updates.values())[:-1]).max() < 10 * noise_std + 3 * backend.encoding.step


class _NewProcessPerMessage(Transport):
    """Each client is rebuilt from its exported bytes before every message and exported again after it, as a
    networked client that is a new process per message would be."""

    def __init__(self, backend, states: dict[int, bytes], updates: dict[int, np.ndarray]):
        super().__init__(states)
        self.backend, self.states, self.updates = backend, states, updates

    def deliver(self, batch, wants_input):
        for c, raw in batch.items():
            client = self.backend.restore_client(self.states[c])
            if wants_input:
                client.set_update(self.updates[c])
                client = self.backend.restore_client(client.export_state())
            reply = client.handle(raw)
            self.states[c] = client.export_state()
            yield c, reply


@pytest.mark.parametrize("method", ["secagg", "secagg, 12 bits + rotation", "paillier"])
def test_exported_and_restored_clients_complete_the_round_with_the_same_sum(method, paillier_backend):
    """A rotating client saves its float update until SETUP names the round's rotation, then its words."""
    backend = {"secagg": lambda: _secagg_backend(consistency_check=True),
               "secagg, 12 bits + rotation": lambda: _secagg_backend(word_bits=12, rotation=True),
               "paillier": lambda: paillier_backend}[method]()
    updates = _updates()
    expected = backend.aggregate(1, updates)
    states = {c: backend.client_half(2, c).export_state() for c in updates}
    outcome = run_protocol(backend.server_half(2, sorted(updates)), _NewProcessPerMessage(backend, states, updates))
    assert outcome.details["abort_reason"] is None
    assert outcome.contributors == expected.contributors
    if backend.cfg.rotation:  # each round's signs come from its session: the same sum within the quantisation
        error = outcome.total - sum(updates.values())
        assert error[-1] == 0 and np.sqrt(np.mean(error ** 2)) < backend.encoding.step * np.sqrt(len(updates))
        return
    np.testing.assert_array_equal(outcome.total, expected.total)  # deterministic rounding, masks cancel exactly


def test_a_paillier_client_state_holds_its_ciphertexts_not_its_update(paillier_backend):
    update = _updates()[0]
    client = paillier_backend.client_half(1, 0)
    client.set_update(update)
    restored = paillier_backend.restore_client(client.export_state())
    assert restored.ciphertexts == client.ciphertexts
    assert update.tobytes() not in client.export_state()
    with pytest.raises(ProtocolError, match="not a saved paillier"):
        paillier_backend.restore_client(_secagg_backend().client_half(1, 0).export_state())
