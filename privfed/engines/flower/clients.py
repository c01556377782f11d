"""The server's side of the Flower engine: the clients as nodes reached through Flower messages.

:class:`FlowerClients` is the round driver's :class:`~privfed.server.driver.ClientSide` for nodes:
:func:`connect` greets every node once (same privfed, same config, which client is where), then each round the
driver runs the aggregation back-end's server half over a :class:`FlowerTransport`, as over the in-process one.
The server process holds the server half only: under secagg it sees masked bytes and the sum, never an individual
update. A node that does not answer a
stage within its timeout is a dropout, exactly as a simulated one.
"""
from __future__ import annotations

import abc
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

import privfed
from privfed.aggregation.base import AggregationBackend, Side, unpack_report
from privfed.aggregation.transport import Transport
from privfed.client.state import ClientUpdate
from privfed.aggregation.paillier import server_key
from privfed.config import Aggregation, AttackKind, ExperimentConfig
from privfed.engines.flower.wire import (
    QUERY,
    TRAIN,
    Hello,
    NodeTimes,
    Stamp,
    Status,
    Step,
    WireError,
    decode_hello_reply,
    decode_step_reply,
    encode_hello,
    encode_step,
    fingerprint,
)
from privfed.errors import ConfigError, PrivfedError
from privfed.privacy.ledger import Ledger
from privfed.secure.paillier_keys import PaillierKey
from privfed.server.driver import ClientSide, OnSkipped, OnTrained

if TYPE_CHECKING:
    from privfed.run_result import RunResult

log = logging.getLogger(__name__)


class FlowerRunError(PrivfedError):
    """The nodes cannot run this experiment (a refusal, a missing or duplicated client): nothing was trained."""


class NodeLink(abc.ABC):
    """How the server reaches nodes: Flower's Grid in a ServerApp, or a test double."""

    @abc.abstractmethod
    def node_ids(self) -> list[int]:
        """The nodes connected now."""

    @abc.abstractmethod
    def exchange(self, messages: dict[int, tuple[str, RecordDict]], timeout: float) -> dict[int, RecordDict | str]:
        """Send (message type, content) to each node id; node id -> reply content, or the error a node reported.
        A node that did not answer within ``timeout`` seconds is absent."""


class GridLink(NodeLink):
    """Flower's Grid. Replies are pulled every ``poll`` seconds (Grid.send_and_receive waits 3 s between pulls,
    which a secagg round of four stages would pay four times)."""

    def __init__(self, grid: Grid, poll: float = 0.2):
        self.grid, self.poll = grid, poll

    def node_ids(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def exchange(self, messages: dict[int, tuple[str, RecordDict]], timeout: float) -> dict[int, RecordDict | str]:
        if not messages:
            return {}
        # a message nobody picked up in time expires: a node that comes back late never acts on a closed stage
        sent = [Message(content=content, dst_node_id=node, message_type=kind, ttl=timeout)
                for node, (kind, content) in messages.items()]
        waiting = set(self.grid.push_messages(sent))
        deadline = time.monotonic() + timeout
        replies: dict[int, RecordDict | str] = {}
        while waiting:
            for reply in self.grid.pull_messages(waiting):
                waiting.discard(reply.metadata.reply_to_message_id)
                node = reply.metadata.src_node_id
                replies[node] = (f"{reply.error.reason} (code {reply.error.code})" if reply.has_error()
                                 else reply.content)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(self.poll)
        return replies


@dataclass(frozen=True)
class NodeEntry:
    """A connected node as the server knows it after the hello."""

    node_id: int
    client: int
    num_examples: int
    epsilon_spent: float  # before this run, over every run in the node's ledger
    ledger_file: bool
    directory: str = ""  # the digest of its directory of identity keys (consistency check)
    paillier: str = ""  # the fingerprint of its Paillier key pair (aggregation=paillier)


def greet(link: NodeLink, stamp: Stamp, nodes: list[int], num_clients: int, stage_timeout: float,
          label_names: tuple[str, ...], audit: str = "") -> list[NodeEntry]:
    """Hello to ``nodes``: the entries of those that answered (a node that answers nothing may still be starting).
    A refusal (another privfed version or config, a partition it does not have) or a client id out of range stops
    the run, before anything is trained. ``audit``: an audit run's settings (JSON), which the audited node needs."""
    replies = link.exchange({n: (QUERY, encode_hello(Hello(stamp, label_names, audit))) for n in nodes},
                            stage_timeout)
    entries = []
    for node in nodes:
        reply = replies.get(node)
        if reply is None:
            continue
        if isinstance(reply, str):
            raise FlowerRunError(f"node {node} failed to answer the hello: {reply}")
        try:
            hello = decode_hello_reply(reply)
        except (WireError, KeyError, ValueError) as err:
            raise FlowerRunError(f"node {node} does not speak privfed's protocol: {err}") from None
        if hello.status is not Status.OK:
            raise FlowerRunError(f"node {node} (client {hello.client}) refuses the run: {hello.reason}")
        if not 0 <= hello.client < num_clients:
            raise FlowerRunError(f"node {node} serves client {hello.client}, but the config has clients "
                                 f"0-{num_clients - 1}")
        log.info("node %d serves client %d (%d examples, epsilon %.3f spent before this run%s)", node, hello.client,
                 hello.num_examples, hello.epsilon_spent, "" if hello.ledger_file else "; its ledger lasts this run only")
        entries.append(NodeEntry(node, hello.client, hello.num_examples, hello.epsilon_spent, hello.ledger_file,
                                 hello.directory, hello.paillier))
    return entries


def connect(link: NodeLink, stamp: Stamp, num_clients: int, connect_timeout: float, stage_timeout: float,
            label_names: tuple[str, ...] = (), poll: float = 1.0, audit: str = "") -> dict[int, NodeEntry]:
    """Greet nodes until one node serves each client 0..num_clients-1; client id -> its node. Two nodes claiming
    one client stop the run."""
    deadline = time.monotonic() + connect_timeout
    entries: dict[int, NodeEntry] = {}
    greeted: set[int] = set()
    while True:
        new = [n for n in link.node_ids() if n not in greeted]
        for entry in greet(link, stamp, new, num_clients, stage_timeout, label_names, audit):
            greeted.add(entry.node_id)
            if entry.client in entries:
                raise FlowerRunError(f"nodes {entries[entry.client].node_id} and {entry.node_id} both serve client "
                                     f"{entry.client}: give each node its own client-id / partition-id")
            entries[entry.client] = entry
        if len(entries) == num_clients:
            digests = {e.directory for e in entries.values()}
            if len(digests) > 1:
                groups = {d[:12]: sorted(c for c, e in entries.items() if e.directory == d) for d in digests}
                raise FlowerRunError(f"the nodes hold different directories of identity keys (clients by directory "
                                     f"digest: {groups}): every signature check would fail; give every node the "
                                     "same directory.json")
            return entries
        if time.monotonic() > deadline:
            missing = sorted(set(range(num_clients)) - set(entries))
            raise FlowerRunError(f"after {connect_timeout:g} s no node serves client(s) {missing}: start a SuperNode "
                                 f"for each (or raise flower.connect_timeout)")
        time.sleep(poll)


class FlowerTransport(Transport):
    """One round's protocol messages to the sampled clients' nodes as Flower messages; the step asking for input
    carries the global model. A node that does not answer within its timeout has left the round (a dropout)."""

    def __init__(self, link: NodeLink, nodes: dict[int, NodeEntry], cfg: ExperimentConfig, stamp: Stamp,
                 round_idx: int, sampled: list[int], global_vector: np.ndarray, backend: AggregationBackend,
                 weight_cap: int, ledger: Ledger, on_trained: OnTrained, on_skipped: OnSkipped,
                 evaluation: bool = False, audited: int | None = None):
        super().__init__(sampled)
        self.audited = audited  # an audit run's audited client: the one node that sends its update to the researcher
        self.link, self.nodes, self.cfg, self.stamp = link, nodes, cfg, stamp
        self.round, self.global_vector, self.backend, self.weight_cap = round_idx, global_vector, backend, weight_cap
        self.ledger, self.on_trained, self.on_skipped, self.evaluation = ledger, on_trained, on_skipped, evaluation
        self.started: set[int] = set()  # clients sent their first message of the round
        self._reports: dict[int, dict] = {}
        self.times: list[NodeTimes] = []  # every reply's, for where the round's time went

    def deliver(self, batch: dict[int, bytes], wants_input: bool) -> Iterator[tuple[int, bytes]]:
        timeout = self.cfg.flower.train_timeout if wants_input else self.cfg.flower.stage_timeout
        messages = {}
        for cid, raw in batch.items():
            request = Step(self.stamp, self.round, cid, cid not in self.started, wants_input,
                           self.backend.vector_length, self.backend.max_clients, self.weight_cap, raw,
                           self.global_vector if wants_input else None, self.evaluation)
            messages[self.nodes[cid].node_id] = (TRAIN if wants_input else QUERY, encode_step(request))
            self.started.add(cid)
        replies = self.link.exchange(messages, timeout)
        for cid in batch:  # the server half takes replies in the order the in-process engine delivers them
            payload = self._take(cid, replies.get(self.nodes[cid].node_id), timeout)
            if payload is not None:
                yield cid, payload

    def _take(self, cid: int, content: RecordDict | str | None, timeout: float) -> bytes | None:
        """The protocol reply in a node's answer (None: the node left the round, and :attr:`left` says why)."""
        if content is None:
            self.left[cid] = f"no answer within {timeout:g} s"
            return None
        if isinstance(content, str):
            self.left[cid] = f"node error: {content}"
            return None
        try:
            reply = decode_step_reply(content)
        except (WireError, KeyError, ValueError) as err:
            self.left[cid] = f"unreadable reply: {err}"
            return None
        if reply.status is Status.REFUSED:
            raise FlowerRunError(f"client {cid}'s node refuses the run: {reply.reason}")
        if reply.update is not None and (cid != self.audited or reply.trained is None):
            self.left[cid] = "sent an update in the clear outside an audit (the server does not take it)"
            return None
        if self.evaluation and (reply.skipped is not None or reply.trained is not None or reply.event is not None):
            self.left[cid] = "answered the evaluation with training or a budget refusal"
            return None
        if reply.skipped is not None:
            self.ledger.append(reply.skipped)
            self.skipped.add(cid)
            self.left[cid] = "its budget refused the round"
            self.on_skipped(reply.skipped)
            return None
        if reply.event is not None:
            self.ledger.append(reply.event)  # the server's copy of this run's events, for the epsilon report
        if reply.trained is not None:
            t = reply.trained
            self.on_trained(ClientUpdate(cid, reply.update, t.num_examples, t.train_loss, t.steps, t.seconds),
                            reply.event)  # an update only from an audit's audited node
        if reply.status is not Status.OK:
            self.left[cid] = reply.reason
            return None
        self.times.append(reply.times)
        self._reports[cid] = unpack_report(reply.report)
        return reply.payload

    def reports(self) -> list[dict]:
        return [self._reports[c] for c in sorted(self._reports)]

    def details(self) -> dict:
        return {"nodes_left": {str(c): why for c, why in sorted(self.left.items())},
                "node_seconds": node_seconds(self.times)}


def _never(*args) -> None:
    raise AssertionError("unreachable: FlowerTransport drops a node that trains in an evaluation")


def node_seconds(times: list[NodeTimes]) -> dict[str, float]:
    """Where the nodes' time went in a round, summed over its messages (process start includes imports)."""
    return {name: float(sum(getattr(t, name) for t in times))
            for name in ("process_start", "build", "train", "protocol")}


class FlowerClients(ClientSide):
    """The run's clients, one node each; the server keeps a copy of the DP events they report for this run."""

    backend_side = Side.SERVER  # the server process makes server halves only (Paillier: it holds the public key)

    def __init__(self, cfg: ExperimentConfig, link: NodeLink, nodes: dict[int, NodeEntry], ledger: Ledger,
                 stamp: Stamp, label_names: tuple[str, ...] = (), audit: str = ""):
        self.cfg, self.link, self.nodes, self.ledger, self.stamp = cfg, link, nodes, ledger, stamp
        self.label_names, self.audit = label_names, audit
        self.audited = json.loads(audit)["client"] if audit else None
        self.before = dict(nodes)  # as greeted at the start: what each had spent before this run
        self.tried: set[int] = set()
        self.weight_cap = max(entry.num_examples for entry in nodes.values())

    @property
    def num_clients(self) -> int:
        return len(self.nodes)

    def _rejoin(self) -> None:
        """A SuperNode that restarted comes back under a new Flower node id: greet new nodes, and a client's new
        node replaces its old one (its ledger file, not Flower's state, carries its budget)."""
        known = {e.node_id for e in self.nodes.values()} | self.tried
        new = [n for n in self.link.node_ids() if n not in known]
        self.tried.update(new)  # one hello per node id and run: a node that cannot answer costs one timeout
        if new:
            for entry in greet(self.link, self.stamp, new, len(self.nodes), self.cfg.flower.stage_timeout,
                               self.label_names, self.audit):
                if entry.paillier != self.nodes[entry.client].paillier:
                    log.warning("node %d (client %d) holds another Paillier key than the run's: ignored",
                                entry.node_id, entry.client)
                    continue
                if entry.directory != self.nodes[entry.client].directory:
                    log.warning("node %d (client %d) holds another directory of identity keys than the run's: "
                                "ignored", entry.node_id, entry.client)
                    continue
                log.warning("client %d is now served by node %d (was %d)", entry.client, entry.node_id,
                            self.nodes[entry.client].node_id)
                self.nodes[entry.client] = entry

    def open_round(self, round_idx: int, sampled: list[int], global_vector: np.ndarray, backend: AggregationBackend,
                   on_trained: OnTrained, on_skipped: OnSkipped) -> Transport:
        self._rejoin()  # every sampled client takes part: its node checks its own budget in its first message
        return FlowerTransport(self.link, self.nodes, self.cfg, self.stamp, round_idx, sampled, global_vector,
                               backend, self.weight_cap, self.ledger, on_trained, on_skipped, audited=self.audited)

    def open_evaluation(self, round_idx: int, participants: list[int], global_vector: np.ndarray,
                        backend: AggregationBackend) -> Transport:
        return FlowerTransport(self.link, self.nodes, self.cfg, self.stamp, round_idx, participants, global_vector,
                               backend, self.weight_cap, self.ledger, _never, _never, evaluation=True)

    def summary(self, results: dict) -> dict:
        """results.json's account of the nodes: where each client ran and what it had spent before this run."""
        notes = [f"client {c}'s node had spent epsilon {e.epsilon_spent:.3f} before this run (its ledger file); the "
                 f"epsilon column counts this run's events only" for c, e in sorted(self.before.items())
                 if e.epsilon_spent > 0]
        return {"engine": "flower", "notes": [*results["notes"], *notes], "nodes": {
            str(c): {"node_id": e.node_id, "examples": e.num_examples, "epsilon_spent_before_run": e.epsilon_spent,
                     "ledger": "file (kept across runs)" if e.ledger_file else "this run only"}
            for c, e in sorted(self.before.items())}}


def check_paillier_keys(public: PaillierKey, nodes: dict[int, NodeEntry]) -> None:
    """Every node must hold the pair of the server's public key: a sum encrypted under another key would decrypt
    to noise, so a mismatch stops the run before anything is trained, naming the nodes."""
    wrong = {c: e for c, e in sorted(nodes.items()) if e.paillier != public.fingerprint}
    if wrong:
        held = "; ".join(f"node {e.node_id} (client {c}): {e.paillier or 'none'}" for c, e in wrong.items())
        raise FlowerRunError(f"the server's Paillier public key is {public.fingerprint}, but {held}: give every "
                             "node the key pair whose public half the server holds")


def flower_clients(cfg: ExperimentConfig, link: NodeLink, *, resume: bool = False, audit: str = ""):
    """``(make_clients, made)``: the factory the engine runner calls with the server's federation and run ledger —
    it greets the nodes and checks their keys — and the list it appends the FlowerClients it made to."""
    stamp = Stamp(privfed.__version__, fingerprint(cfg))
    made: list[FlowerClients] = []

    def make_clients(fed, ledger: Ledger) -> FlowerClients:
        nodes = connect(link, stamp, len(fed.clients), cfg.flower.connect_timeout, cfg.flower.stage_timeout,
                        fed.label_names, audit=audit)
        if cfg.aggregation.method is Aggregation.PAILLIER:
            check_paillier_keys(server_key(cfg.aggregation)[0], nodes)
        forgetful = sorted(c for c, e in nodes.items() if not e.ledger_file)
        if resume and forgetful:
            raise FlowerRunError(f"cannot resume: the nodes of clients {forgetful} keep their ledger in Flower's state, "
                                 "which a new Flower run starts empty; give every node a ledger file")
        made.append(FlowerClients(cfg, link, nodes, ledger, stamp, fed.label_names, audit))
        return made[0]

    return make_clients, made


def run_over_link(cfg: ExperimentConfig, out_dir: Path, link: NodeLink, *, resume: bool = False,
                  progress: bool = False) -> RunResult:
    """The server's side of a run whose clients are nodes behind ``link``: greet them, run the rounds, write the
    results (with the nodes' account) to ``out_dir``. Resuming needs the run's own config and nodes whose ledgers
    are files: a node's ledger in Flower's state lasts one Flower run, and a resumed run is a new one."""
    from privfed.attacks.simulation import AttackSimulation
    from privfed.engines.runner import run_rounds
    from privfed.federation.setup import build_federation
    from privfed.results import RunDirectory

    if resume and fingerprint(RunDirectory(out_dir).config()) != fingerprint(cfg):
        raise ConfigError("resume", f"{out_dir} was run with another config (fingerprint "
                                    f"{fingerprint(RunDirectory(out_dir).config())}, this app's is {fingerprint(cfg)})")
    make_clients, made = flower_clients(cfg, link, resume=resume)
    if cfg.attack.kind is AttackKind.NONE:
        return run_rounds(cfg, out_dir, build_federation, make_clients, resume=resume, progress=progress,
                          extra_results=lambda results: made[0].summary(results))
    # the server builds the same poisoned federation as the nodes, to know the attackers and measure the attack
    # (a backdoor's triggered held-out set); the malicious nodes run the attack themselves
    attack = AttackSimulation(cfg)
    return run_rounds(cfg, out_dir, attack.build, make_clients, resume=resume, progress=progress,
                      callbacks=(attack.observer,),
                      extra_results=lambda results: {**made[0].summary(results), **attack.extra_results(results)})


def audit_over_link(cfg: ExperimentConfig, out_dir: Path, link: NodeLink, settings, *, progress: bool = False):
    """``privfed audit`` of ``cfg`` (already the audited config: the nodes parse it too) with the clients as nodes
    behind ``link``: the audited client's node (node-config
    ``audit=true``) carries the members, secrets and canaries and reports its own update; the server prepares the
    same target from the shared seed, reads what it can of the uploads and the sum, scores the final model on the
    audited records, and writes audit.json and audit.md beside the run's files in ``out_dir``; returns the
    :class:`~privfed.audit.report.AuditReport`."""
    from privfed.runners.audit import audit_run

    make_clients, made = flower_clients(cfg, link, audit=json.dumps(settings.as_dict()))
    return audit_run(cfg, out_dir, settings, progress=progress, make_clients=make_clients,
                     extra_results=lambda results: made[0].summary(results))
