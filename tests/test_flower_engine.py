"""The Flower engine's message path with nodes in this process (tests/flower_helpers.LocalLink): the same result as
the in-process engine, node ledgers that outlive runs, refusals, real dropouts as silence, and the wire format.
The same code behind real SuperNodes is tested in test_flower_deployment.py (slow)."""
from __future__ import annotations

import numpy as np
import pytest
from flower_helpers import LocalLink

import privfed
from privfed.engines.flower.apps import check_flower_simulation, check_flower_support
from privfed.engines.flower.clients import FlowerRunError, connect, run_over_link
from privfed.engines.flower.node import NodeSettings, stamp_problem
from privfed.engines.flower.wire import (
    Hello,
    Stamp,
    Status,
    Step,
    StepReply,
    Trained,
    decode_step,
    decode_step_reply,
    encode_step,
    encode_step_reply,
    fingerprint,
)
from privfed.engines.inprocess import run
from privfed.errors import ConfigError
from privfed.privacy.ledger import DpSgdEvent, Ledger
from privfed.secure.paillier_keys import PaillierKey, public_key_path

DP_LORA = ("privacy.mode=target_epsilon", "privacy.epsilon=8", "model.regime=lora")
METRICS = ("train_loss", "eval_loss", "eval_accuracy", "epsilon", "clients_trained", "clients_skipped")


def partitions(n: int, **extra) -> list[dict]:
    return [{"partition-id": i, **{k: v.format(i=i) for k, v in extra.items()}} for i in range(n)]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    from conftest import TINY_CLASSIFIER, make_config

    cfg = make_config(TINY_CLASSIFIER, *DP_LORA)
    return cfg, run(cfg, tmp_path_factory.mktemp("inproc"), progress=False)


def test_plain_over_flower_messages_equals_the_in_process_run_exactly(in_process, tmp_path):
    cfg, expected = in_process
    link = LocalLink(cfg, partitions(3))
    results = run_over_link(cfg, tmp_path / "flower", link)
    for want, got in zip(expected["rounds"], results["rounds"], strict=True):
        assert {k: got[k] for k in METRICS} == {k: want[k] for k in METRICS}
    assert results["engine"] == "flower" and set(results["nodes"]) == {"0", "1", "2"}
    # the global model travels only in the messages that ask for an update, and never comes back whole
    trains = [content for _, kind, content in link.sent if kind == "train"]
    assert len(trains) == 3 * cfg.training.rounds


def test_secagg_over_flower_survives_a_node_that_goes_silent_at_the_masked_input(in_process, tmp_path):
    cfg, expected = in_process
    cfg = privfed.config.from_dict({**privfed.config.to_dict(cfg), "aggregation": {"method": "secagg"}})
    gone = 101  # client 1's node stops answering once asked for its masked input in round 2 (killed mid-round)

    def silent(node, content):
        step = decode_step(content) if "privfed.payload" in content else None
        return node == gone and step is not None and step.round == 2 and step.wants_input

    results = run_over_link(cfg, tmp_path / "secagg", LocalLink(cfg, partitions(3), silent))
    first, second = results["rounds"]
    assert first["clients_aggregated"] == 3
    assert abs(first["eval_loss"] - expected["rounds"][0]["eval_loss"]) < 1e-3  # within the quantisation step
    assert second["clients_aggregated"] == 2 and second["aggregation"]["dropouts_recovered"] == 1
    assert second["aggregation"]["left"] == {"1": "did not answer ROUTED_SHARES"}
    assert second["aggregation"]["nodes_left"] == {"1": "no answer within 1800 s"}
    assert np.isfinite(second["eval_loss"])


def test_few_bits_rotation_adaptive_clipping_and_the_consistency_check_over_flower(in_process, tmp_path):
    """What a node can only learn from SETUP (the rotation's signs, the round's clip norm) reaches it over Flower:
    the nodes encode 16-bit rotated words with distributed noise and the server moves the clip norm; each node
    signs with the identity key it was given (privfed flower identities), and one without a key refuses the run."""
    from privfed.secure.identities import key_file, write_identities

    cfg, _ = in_process
    cfg = privfed.config.from_dict({**privfed.config.to_dict(cfg),
                                    "aggregation": {"method": "secagg", "word_bits": 16, "rotation": True,
                                                    "consistency_check": True},
                                    "privacy": {**privfed.config.to_dict(cfg)["privacy"], "distributed_noise": 0.5,
                                                "update_clip": 0.5, "clip_quantile": 0.5,
                                                "clip_learning_rate": 1.0}})
    directory = write_identities(tmp_path / "keys", 3)
    with pytest.raises(FlowerRunError, match="node .* refuses the run: .*consistency_check needs this node's "
                                             "identity-key"):
        run_over_link(cfg, tmp_path / "no-keys", LocalLink(cfg, partitions(3)))
    nodes = partitions(3, ledger=str(tmp_path / "node{i}" / "ledger.jsonl"),
                       **{"identity-key": str(tmp_path / "keys" / "client-{i}.pem"), "directory": str(directory)})
    assert key_file(tmp_path / "keys", 2).stat().st_mode & 0o077 == 0  # a private key readable by its owner only
    with pytest.raises(FileExistsError):
        write_identities(tmp_path / "keys", 3)  # never replaced without overwrite
    stale = write_identities(tmp_path / "other-keys", 3)  # node 2 holds another (self-consistent) directory
    mixed = [*nodes[:2], {**nodes[2], "identity-key": str(key_file(stale.parent, 2)), "directory": str(stale)}]
    with pytest.raises(FlowerRunError, match="different directories of identity keys"):
        run_over_link(cfg, tmp_path / "mixed", LocalLink(cfg, mixed))
    with pytest.raises(ConfigError, match="not client 1's key"):
        NodeSettings.from_node_config({"partition-id": 1, "identity-key": str(key_file(tmp_path / "keys", 0)),
                                       "directory": str(directory)}).identity(cfg)
    results = run_over_link(cfg, tmp_path / "low-bits", LocalLink(cfg, nodes))
    assert results["rounds"][0]["aggregation"]["consistency_check"]
    first, second = results["rounds"]
    assert first["aggregation"]["word_bits"] == 16 and first["aggregation"]["rotation"]
    assert first["clients_aggregated"] == second["clients_aggregated"] == 3
    assert second["aggregation"]["update_clip"] == first["next_update_clip"] != 0.5
    assert 0 < results["final"]["user_epsilon"] < float("inf")
    for c in range(3):  # each node's own ledger file records the noise its masked inputs carried, at the round's S
        events = Ledger.read(tmp_path / f"node{c}" / "ledger.jsonl").distributed_dp(c)
        assert [e.update_clip for e in events] == [r["aggregation"]["update_clip"] for r in results["rounds"]]


def test_a_node_ledger_outlives_the_run_and_enforces_its_budget_in_the_next(tmp_path):
    from conftest import TINY_CLASSIFIER, make_config

    cfg = make_config(TINY_CLASSIFIER, *DP_LORA, "training.rounds=1")
    nodes = partitions(3, ledger=str(tmp_path / "node{i}" / "ledger.jsonl"))
    first = run_over_link(cfg, tmp_path / "run1", LocalLink(cfg, nodes))
    assert first["rounds"][0]["clients_trained"] == 3
    spent = {c: Ledger.read(tmp_path / f"node{c}" / "ledger.jsonl").dp_sgd(c) for c in range(3)}
    assert all(len(events) == 1 for events in spent.values())
    # a new run (new Flower contexts, new server) with the same ledgers: each node has spent epsilon 8 already
    second = run_over_link(cfg, tmp_path / "run2", LocalLink(cfg, nodes))
    assert second["rounds"][0]["clients_trained"] == 0 and second["rounds"][0]["clients_skipped"] == 3
    assert all(node["epsilon_spent_before_run"] > 7.9 for node in second["nodes"].values())
    assert any("did not train" in note for note in second["notes"])
    assert all(len(Ledger.read(tmp_path / f"node{c}" / "ledger.jsonl").dp_sgd(c)) == 1 for c in range(3))


def test_nodes_refuse_another_version_or_an_unapproved_config(tiny_classifier):
    cfg = tiny_classifier()
    own = Stamp(privfed.__version__, fingerprint(cfg))
    settings = NodeSettings(client_id=0, partition_id=0)
    assert stamp_problem(own, cfg, settings) == ""
    assert "install the same version" in stamp_problem(Stamp("0.0.1", own.config), cfg, settings)
    assert "same config" in stamp_problem(Stamp(own.version, "0" * 16), cfg, settings)
    pinned = NodeSettings(client_id=0, partition_id=0, approved_config="feedfacefeedface")
    assert "approved config feedfacefeedface only" in stamp_problem(own, cfg, pinned)
    link = LocalLink(cfg, [{"partition-id": 0, "approved-config": "feedfacefeedface"}, {"partition-id": 1},
                           {"partition-id": 2}])
    with pytest.raises(FlowerRunError, match="refuses the run: this node approved config feedfacefeedface"):
        connect(link, own, 3, connect_timeout=5, stage_timeout=5)


def test_connect_names_duplicated_and_missing_clients(tiny_classifier):
    cfg = tiny_classifier()
    stamp = Stamp(privfed.__version__, fingerprint(cfg))
    with pytest.raises(FlowerRunError, match="both serve client 0"):
        connect(LocalLink(cfg, [{"partition-id": 0}, {"partition-id": 0}]), stamp, 3, 5, 5)
    with pytest.raises(FlowerRunError, match=r"no node serves client\(s\) \[2\]"):
        connect(LocalLink(cfg, [{"partition-id": 0}, {"partition-id": 1}]), stamp, 3, 0.1, 5, (), poll=0.05)
    with pytest.raises(FlowerRunError, match="partition-id 7"):
        connect(LocalLink(cfg, [{"partition-id": 7}]), stamp, 3, 5, 5)


@pytest.mark.parametrize(("node_config", "problem"), [
    ({}, "exactly one of partition-id"),
    ({"partition-id": 0, "data-path": "x.csv"}, "exactly one of partition-id"),
    ({"data-path": "x.csv"}, "needs client-id"),
    ({"partition-id": 1, "client-id": 2}, "must equal partition-id"),
    ({"partition-id": 0, "ledgr": "x"}, r"unknown key\(s\) \['ledgr'\]"),
    ({"partition-id": 0, "identity-key": "client-0.pem"}, "identity-key and directory go together"),
])
def test_node_config_errors(node_config, problem):
    with pytest.raises(ConfigError, match=problem):
        NodeSettings.from_node_config(node_config)


def test_paillier_over_flower_keeps_the_private_key_off_the_server_and_names_a_node_without_the_pair(
        tiny_classifier, tmp_path):
    pair = PaillierKey.generate(2048)
    pair_path = pair.save(tmp_path / "key.json")
    public = pair.public().save(public_key_path(pair_path))
    other = PaillierKey.generate(2048).save(tmp_path / "other.json")
    base = ("aggregation=paillier", "aggregation.key_bits=2048", "training.rounds=1", "model.regime=lora")
    check_flower_support(tiny_classifier(*base))
    with pytest.raises(ConfigError, match=r"\(paillier-key\), which the simulation.s virtual nodes lack"):
        check_flower_simulation(tiny_classifier(*base))

    def attempt(server_key_file: str, node_keys: list[str]):
        cfg = tiny_classifier(*base, *([f"aggregation.key_file={server_key_file}"] if server_key_file else []))
        nodes = [{"partition-id": i, **({"paillier-key": k} if k else {})} for i, k in enumerate(node_keys)]
        return run_over_link(cfg, tmp_path / f"run-{len(list(tmp_path.iterdir()))}", LocalLink(cfg, nodes))

    pairs = [str(pair_path)] * 3
    with pytest.raises(ConfigError, match="holds the private key, which the server must never hold"):
        attempt(str(pair_path), pairs)
    with pytest.raises(ConfigError, match="give the server KEY.pub as aggregation.key_file"):
        attempt("", pairs)
    with pytest.raises(FlowerRunError, match=r"node 101 \(client 1\) refuses the run: .*needs this node's "
                                             "paillier-key"):
        attempt(str(public), [str(pair_path), "", str(pair_path)])
    with pytest.raises(FlowerRunError, match=rf"public key is {pair.fingerprint}, but node 102 \(client 2\): "
                                             rf"{PaillierKey.load(other).fingerprint}"):
        attempt(str(public), [str(pair_path), str(pair_path), str(other)])
    result = attempt(str(public), pairs)  # the server holds the public half, each node the pair
    assert result["rounds"][0]["clients_aggregated"] == 3
    assert result["rounds"][0]["aggregation"]["key"]["fingerprint"] == pair.fingerprint


def test_wire_round_trips():
    step = Step(Stamp("1", "abc"), 3, 2, True, True, 10, 5, 40, b"\x00\x01payload", np.arange(9, dtype=np.float32))
    back = decode_step(encode_step(step))
    assert back.payload == step.payload and np.array_equal(back.global_vector, step.global_vector)
    assert (back.round, back.client, back.first, back.wants_input, back.weight_cap) == (3, 2, True, True, 40)
    event = DpSgdEvent(client=2, round=3, noise_multiplier=1.1, sample_rate=0.25, steps=4, max_grad_norm=1.0)
    reply = StepReply(Status.OK, b"masked", b"report", Trained(40, 0.5, 4, 1.5), event)
    assert decode_step_reply(encode_step_reply(reply)) == reply


def test_nodes_with_their_own_files_train_on_the_federations_classes(tmp_path):
    """Each node reads its organisation's own JSONL (data-path); node 2's file lacks a class, so its labels must
    be mapped onto the server's class list, not re-inferred from its own file."""
    import json

    from conftest import TINY_CLASSIFIER, make_config

    from privfed.config import DataConfig
    from privfed.data.sources import load_data

    bbc = load_data(DataConfig(source="bbc_news"))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(bbc))[:200]

    def write(path, rows):
        path.write_text("".join(json.dumps({"text": bbc.examples[i], "topic": bbc.label_names[bbc.labels[i]]}) + "\n"
                                for i in rows))
        return str(path)

    missing = bbc.label_names.index("sports")
    node_rows = [order[:50], order[50:100], [i for i in order[100:170] if bbc.labels[i] != missing]]
    nodes = [{"client-id": c, "data-path": write(tmp_path / f"hospital-{c}.jsonl", rows)}
             for c, rows in enumerate(node_rows)]
    cfg = make_config(TINY_CLASSIFIER, *DP_LORA, "training.rounds=1", "partition.scheme=iid",
                      f"data.source={write(tmp_path / 'server-eval.jsonl', order[170:])}", "data.label_column=topic",
                      "data.max_examples=0", "partition.min_examples=1")
    results = run_over_link(cfg, tmp_path / "run", LocalLink(cfg, nodes))
    assert results["rounds"][0]["clients_trained"] == 3
    # a node keeps data.test_fraction of its own file aside (it does not evaluate); the rest trains
    assert [results["nodes"][str(c)]["examples"] for c in range(3)] == [40, 40, round(len(node_rows[2]) * 0.8)]
    from privfed.engines.flower.node import NodeSettings, RunFacts, node_federation

    fed = node_federation(cfg, NodeSettings.from_node_config(nodes[2]), RunFacts(tuple(bbc.label_names)))
    assert fed.label_names == tuple(bbc.label_names)
    own = [json.loads(line)["topic"] for line in (tmp_path / "hospital-2.jsonl").read_text().splitlines()]
    assert "sports" not in own


def test_relabelling_maps_a_subset_of_classes_and_refuses_unknown_ones():
    from privfed.data.records import TextDataset

    data = TextDataset(("a", "b", "c"), (0, 1, 0), ("g",) * 3, ("business", "tech"))
    federation = ("business", "politics", "sport", "tech")
    assert data.relabelled(federation).labels == (0, 3, 0)
    with pytest.raises(ValueError, match=r"labels \['tech'\] are not among"):
        data.relabelled(("business", "sport"))


class NodeHarness:
    """One node driven message by message, as the server would (or as a misbehaving server might)."""

    def __init__(self, cfg, settings):
        from privfed.aggregation.plain import PlainBackend
        from privfed.engines.flower.node import RunFacts, hello, node_federation

        self.cfg, self.settings, self.state = cfg, settings, {}
        self.stamp = Stamp(privfed.__version__, fingerprint(cfg))
        self.hello = hello(cfg, settings, Hello(self.stamp, ()), self.state)
        self.fed = node_federation(cfg, settings, RunFacts())
        self.request = PlainBackend(cfg.aggregation, 3, self.fed.num_trainable + 1).server_half(1, [0]).open()[0]

    def step(self, round_idx, first=True, wants_input=True):
        from privfed.engines.flower.node import step

        return step(self.cfg, self.settings, Step(self.stamp, round_idx, self.settings.client_id, first, wants_input,
                                                  self.fed.num_trainable + 1, 3, 100, self.request,
                                                  self.fed.initial_vector), self.state)


def test_a_node_trains_once_a_round_never_without_its_budget_check_and_ignores_stale_rounds(tmp_path,
                                                                                          tiny_classifier):
    cfg = tiny_classifier(*DP_LORA, "training.rounds=1")  # the budget allows exactly one round
    ledger = tmp_path / "ledger.jsonl"
    node = NodeHarness(cfg, NodeSettings(client_id=0, partition_id=0, ledger=str(ledger)))
    assert node.hello.status is Status.OK and node.hello.epsilon_spent == 0
    first = node.step(1)
    assert first.status is Status.OK and first.event is not None
    assert len(Ledger.read(ledger).dp_sgd()) == 1  # on disk before the reply
    assert "already trained in round 1" in node.step(1, first=False).reason
    # a server that skips the round's first message cannot reach training without the budget check
    assert "no saved protocol state for round 2" in node.step(2, first=False).reason
    skipped = node.step(2)
    assert skipped.status is Status.SKIPPED and skipped.skipped.epsilon_if_trained > 8
    assert [e.kind for e in Ledger.read(ledger).events] == ["dp_sgd", "skipped_budget"]
    assert "round 2 has begun" in node.step(1).reason


def test_a_node_ledger_counts_every_event_in_its_file_whatever_the_client_id(tmp_path, tiny_classifier):
    cfg = tiny_classifier(*DP_LORA, "training.rounds=1")
    ledger = tmp_path / "ledger.jsonl"
    Ledger([DpSgdEvent(client=7, round=1, noise_multiplier=1.0, sample_rate=0.5, steps=3,
                       max_grad_norm=1.0)]).write(ledger)
    node = NodeHarness(cfg, NodeSettings(client_id=0, partition_id=0, ledger=str(ledger)))
    assert node.hello.epsilon_spent > 1  # the data holder's earlier federation (as client 7) counts
    assert [e.client for e in Ledger.read(ledger).events] == [7]  # its history is kept as recorded


def test_a_node_with_a_ledger_file_draws_fresh_noise_unless_told_to_be_reproducible(tmp_path, tiny_classifier):
    cfg = tiny_classifier(*DP_LORA)

    def upload(name, **options):
        settings = NodeSettings(client_id=0, partition_id=0, ledger=str(tmp_path / f"{name}.jsonl"), **options)
        return NodeHarness(cfg, settings).step(1).payload  # plain: the update itself

    assert NodeSettings.from_node_config({"partition-id": 0, "ledger": "x"}).reproducible is False
    assert NodeSettings.from_node_config({"partition-id": 0}).reproducible is True
    assert upload("a", reproducible=True) == upload("b", reproducible=True)
    assert upload("c", reproducible=False) != upload("d", reproducible=False)


def test_a_privacy_check_failing_on_a_node_stops_the_run(tmp_path, tiny_classifier, monkeypatch):
    from privfed.client import procedure
    from privfed.errors import PrivacyViolationError

    def broken(*args, **kwargs):
        raise PrivacyViolationError("client 0: Opacus' accountant and the ledger disagree")

    monkeypatch.setattr(procedure, "train_recorded", broken)
    node = NodeHarness(tiny_classifier(*DP_LORA), NodeSettings(client_id=0, partition_id=0))
    reply = node.step(1)
    assert reply.status is Status.REFUSED and "accountant and the ledger disagree" in reply.reason


def test_resuming_over_flower_needs_the_runs_config_and_ledger_files(tmp_path, tiny_classifier):
    cfg = tiny_classifier(*DP_LORA, "training.rounds=2")
    run_over_link(cfg, tmp_path / "run", LocalLink(cfg, partitions(3)))
    with pytest.raises(ConfigError, match="was run with another config"):
        run_over_link(tiny_classifier(*DP_LORA, "training.rounds=3"), tmp_path / "run",
                      LocalLink(cfg, partitions(3)), resume=True)
    with pytest.raises(FlowerRunError, match="cannot resume: the nodes of clients \\[0, 1, 2\\] keep their ledger"):
        run_over_link(cfg, tmp_path / "run", LocalLink(cfg, partitions(3)), resume=True)


def test_a_malicious_node_runs_the_attack_as_privfed_run_does(tiny_classifier, tmp_path):
    """An out_of_range attacker over Flower's message path: the node (which opted in) restores its secagg half from
    bytes, wraps it to bypass the encoding, and the range check rejects the round, exactly as in process; a node
    that did not opt in, or serves its own data (not a partition), refuses the attack."""
    cfg = tiny_classifier("aggregation=secagg", "defence.range_check=true", "attack=out_of_range", "attack.clients=[0]",
                          "attack.range_factor=50", "training.rounds=1", "model.regime=lora")
    local = run(cfg, tmp_path / "in-process", progress=False)
    with pytest.raises(FlowerRunError, match="makes client 0 an attacker; a node runs the attack only with "
                                             "simulate-attack=true"):  # a server cannot switch a budget off
        run_over_link(cfg, tmp_path / "no-opt-in", LocalLink(cfg, [{"partition-id": i} for i in range(3)]))
    nodes = [{"partition-id": 0, "simulate-attack": True}, {"partition-id": 1}, {"partition-id": 2}]
    flower = run_over_link(cfg, tmp_path / "flower", LocalLink(cfg, nodes))
    for result in (local, flower):
        assert "every sum failed the range check" in " ".join(result["notes"])
        assert result["attack"]["attacker_inputs_rejected"] == result["attack"]["attacker_inputs"] == 1
    assert flower["rounds"][0]["eval_loss"] == local["rounds"][0]["eval_loss"]  # the model was kept: unchanged
    data = tmp_path / "own.csv"
    data.write_text("text,label\nsome words,business\n")
    with pytest.raises(FlowerRunError, match="attack simulation runs on nodes that serve a partition"):
        run_over_link(cfg, tmp_path / "own", LocalLink(cfg, [{"data-path": str(data), "client-id": 0}]))


def test_only_a_node_that_agreed_carries_an_audit(tiny_classifier, tmp_path):
    """The audit splits the audited client's records, inserts canaries and sends its update to the researcher: a
    node without audit=true in its own node config refuses, one with a ledger file too (a fault would falsify a
    budget that outlives the run), and one serving its own data (the researcher could not score it). The audit itself over Flower is a cell of the capability matrix (test_capabilities)."""
    from privfed.audit.settings import AuditKind, AuditSettings, audited_config
    from privfed.engines.flower.clients import audit_over_link

    settings = AuditSettings(audits=frozenset({AuditKind.ONE_RUN}), client=0, canaries=50)
    cfg = audited_config(tiny_classifier("training.rounds=1", "model.regime=lora"), settings)
    with pytest.raises(FlowerRunError, match="audits client 0; a node carries the audit .* only with audit=true"):
        audit_over_link(cfg, tmp_path / "no-opt-in", LocalLink(cfg, partitions(3)), settings)
    nodes = [{"partition-id": 0, "audit": True, "ledger": str(tmp_path / "ledger.jsonl")}, *partitions(3)[1:]]
    with pytest.raises(FlowerRunError, match="must not enter a budget that outlives the run"):  # a fault could
        audit_over_link(cfg, tmp_path / "ledger", LocalLink(cfg, nodes), settings)
    data = tmp_path / "own.csv"
    data.write_text("text,label\nsome words,business\n")
    with pytest.raises(FlowerRunError, match="the audited node serves a partition"):
        audit_over_link(cfg, tmp_path / "own", LocalLink(cfg, [{"data-path": str(data), "client-id": 0,
                                                                "audit": True}]), settings)


def test_the_server_takes_an_update_in_the_clear_only_from_an_audits_audited_node(tiny_classifier):
    """A node that sends its update beside its protected input outside an audit (or as another client than the
    audited one) leaves the round: the server never hands that update to anyone."""
    from privfed.engines.flower.clients import FlowerTransport

    trained = []
    from privfed.aggregation.base import pack_report

    reply = encode_step_reply(StepReply(Status.OK, b"masked", pack_report({}), trained=Trained(10, 0.5, 3, 0.1),
                                        update=np.ones(4, dtype=np.float32)))
    for audited, client, taken in ((None, 0, False), (1, 0, False), (1, 1, True)):
        transport = FlowerTransport(None, {}, tiny_classifier(), None, 1, [0, 1], np.zeros(4), None, 10, Ledger(),
                                    lambda update, event: trained.append(update), None, audited=audited)
        assert (transport._take(client, reply, 1.0) == b"masked") == taken
        assert (client in transport.left) != taken
    assert len(trained) == 1 and trained[0].client == 1 and trained[0].delta.tolist() == [1, 1, 1, 1]
