"""The node's side: one organisation's client, its data, its ledger and its half of every round's secure sum.

A SuperNode's ``node_config`` says which client it is and where its data and ledger are. Each Flower message may
start a new process, so everything that must outlive a message is plain data: the client's facts and the protocol
half's exported state in Flower's per-run node state, the ledger in a file that also outlives runs (the data holder
enforces its own epsilon budget across every run it takes part in). Only the step that trains builds the model.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import msgpack
import numpy as np
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import privfed
from privfed.aggregation import make_backend
from privfed.aggregation.base import AggregationBackend, ClientHalf, Side, pack_report
from privfed.client.procedure import ClientProcedure
from privfed.client.state import ClientState
from privfed.config import Aggregation, AggregationConfig, AttackKind, ExperimentConfig, Partition
from privfed.engines.flower.wire import (
    Hello,
    HelloReply,
    NodeTimes,
    Stamp,
    Status,
    Step,
    StepReply,
    Trained,
    fingerprint,
)
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.federation.held_out import evaluation_aggregation
from privfed.privacy.accounting import epsilon_of_events
from privfed.privacy.distributed import DistributedDp
from privfed.privacy.ledger import Ledger
from privfed.secure.identities import directory_digest, load_directory, load_identity
from privfed.secure.paillier_keys import PaillierKey
from privfed.secure.messages import ProtocolError
from privfed.server.driver import clients_per_round

log = logging.getLogger(__name__)

# what a node keeps in Flower's node state: its client's facts, its protocol half, its ledger (without a ledger
# file), and what the server's hello told it (RunFacts)
CLIENT_KEY, HALF_KEY, LEDGER_KEY, FACTS_KEY = "client", "half", "ledger", "run-facts"
HALF_ROUND_KEY, ROUND_KEY, TRAINED_KEY = "half-round", "round", "trained-round"  # rounds, as decimal bytes
NOISE_KEY = "noise-round"  # the last round whose distributed-DP share the node's ledger records
EVAL_HALF_KEY, EVAL_HALF_ROUND_KEY = "eval-half", "eval-half-round"  # the federated evaluation's protocol half
EVALUATED_KEY = "evaluated-round"  # the last round whose evaluation input left the node


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's own settings, from ``--node-config`` (Flower's simulation sets partition-id by itself).

    ``partition-id``: a partition of the config's data (demos, simulation); or ``data-path``: the organisation's
    own file or folder, in any data.source format, with ``client-id``. ``ledger``: the privacy ledger file that
    outlives runs (absent: the ledger lives for one run only). ``identity-key`` and ``directory``: this client's
    Ed25519 key file and the directory of every client's public key (``privfed flower identities``), which
    ``aggregation.consistency_check`` needs. ``simulate-attack``: this node may run the config's attack when the
    config names its client an attacker (never on a server's word alone: an attacker ignores its budget).
    ``audit``: this node may carry an audit's audited client (``privfed flower loopback --audit``; a partition-id
    node without a ledger file). ``paillier-key``: the clients' Paillier key pair (``privfed keygen``), which
    ``aggregation=paillier`` needs (the server holds the public key only). ``approved-config``: the only config
    fingerprint this node accepts (absent: any config stamped like the node's own parse). ``reproducible``: seed
    Poisson sampling and DP noise from the config's seed, round and client, so a run equals ``privfed run`` with
    the same seed; the default only without a ledger file. A node whose ledger outlives runs draws fresh OS entropy for every round it
    trains: two runs with one seed would otherwise add the same noise to two releases, and their difference would
    cancel it.
    """

    client_id: int
    partition_id: int | None = None
    data_path: str = ""
    ledger: str = ""
    approved_config: str = ""
    reproducible: bool = True
    identity_key: str = ""
    directory: str = ""
    paillier_key: str = ""
    simulate_attack: bool = False
    audit: bool = False

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        known = {"partition-id", "num-partitions", "client-id", "data-path", "ledger", "approved-config",
                 "reproducible", "identity-key", "directory", "paillier-key", "simulate-attack", "audit"}
        unknown = sorted(set(node_config) - known)
        if unknown:
            raise ConfigError("node-config", f"unknown key(s) {unknown}; allowed: {sorted(known)}")
        partition = node_config.get("partition-id")
        data_path = str(node_config.get("data-path", ""))
        if (partition is None) == (not data_path):
            raise ConfigError("node-config", "give exactly one of partition-id (a partition of the config's data) "
                                             "or data-path (this organisation's own data)")
        client = node_config.get("client-id", partition)
        if client is None:
            raise ConfigError("node-config", "data-path needs client-id: the stable id of this organisation's client")
        if partition is not None and int(client) != int(partition):
            raise ConfigError("node-config", f"client-id {client} must equal partition-id {partition} (or be left out)")
        if int(client) < 0:
            raise ConfigError("node-config", f"client-id must be >= 0, got {client}")
        ledger = str(node_config.get("ledger", ""))
        reproducible = node_config.get("reproducible", not ledger)
        if not isinstance(reproducible, bool):
            raise ConfigError("node-config", f"reproducible must be true or false, got {reproducible!r}")
        identity_key, directory = str(node_config.get("identity-key", "")), str(node_config.get("directory", ""))
        if bool(identity_key) != bool(directory):
            raise ConfigError("node-config", "identity-key and directory go together (privfed flower identities)")
        flags = {name: node_config.get(name, False) for name in ("simulate-attack", "audit")}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise ConfigError("node-config", f"{name} must be true or false, got {value!r}")
        return cls(int(client), None if partition is None else int(partition), data_path, ledger,
                   str(node_config.get("approved-config", "")), reproducible, identity_key, directory,
                   str(node_config.get("paillier-key", "")), flags["simulate-attack"], flags["audit"])

    def identity(self, cfg: ExperimentConfig) -> tuple[Ed25519PrivateKey, dict[int, bytes]] | None:
        """This client's identity key and the directory, when the run's consistency check needs them (ConfigError
        if the node was given none, or a key that is not its client's)."""
        if not cfg.aggregation.consistency_check:
            return None
        if not self.identity_key:
            raise ConfigError("node-config", "aggregation.consistency_check needs this node's identity-key and the "
                                             "directory of public keys (write them with privfed flower identities)")
        directory = load_directory(Path(self.directory))
        return load_identity(Path(self.identity_key), self.client_id, directory), directory

    def aggregation(self, cfg: ExperimentConfig) -> AggregationConfig:
        """The aggregation config as this node's back-end uses it: under Paillier, with the node's own key pair
        (``paillier-key``) in place of the server's public key (ConfigError when the node was given none)."""
        if cfg.aggregation.method is not Aggregation.PAILLIER:
            return cfg.aggregation
        if not self.paillier_key:
            raise ConfigError("node-config", "aggregation=paillier needs this node's paillier-key: the clients' key "
                                             "pair (privfed keygen KEY; the server holds KEY.pub only)")
        key = PaillierKey.load(self.paillier_key, "node-config paillier-key")
        if not key.has_private:
            raise ConfigError("node-config", f"paillier-key {self.paillier_key} holds only a public key; the node "
                                             "needs the key pair to decrypt the sum")
        return replace(cfg.aggregation, key_file=self.paillier_key)


def stamp_problem(stamp: Stamp, cfg: ExperimentConfig, settings: NodeSettings) -> str:
    """Why this node must not take part in the server's run ("" when it may)."""
    if stamp.version != privfed.__version__:
        return f"the server runs privfed {stamp.version}, this node {privfed.__version__}: install the same version"
    own = fingerprint(cfg)
    if stamp.config != own:
        return (f"the server's config fingerprint is {stamp.config}, this node parses the run's config as {own}: "
                "both sides must run the same config with the same privfed")
    if settings.approved_config and own != settings.approved_config:
        return (f"this node approved config {settings.approved_config} only; the run's config is {own} "
                "(update approved-config in the node's --node-config after reviewing the new config)")
    return ""


@dataclass(frozen=True)
class RunFacts:
    """What the server's hello told this node, kept in Flower's node state for the run's later messages: the
    federation's classes, and — only on the node that carries an audit's audited client — the audit's settings
    (AuditSettings as JSON; its federation is built with the audit's members, secrets and canaries)."""

    label_names: tuple[str, ...] = ()
    audit: str = ""

    def pack(self) -> bytes:
        return msgpack.packb({"labels": list(self.label_names), "audit": self.audit})

    @classmethod
    def unpack(cls, blob: bytes) -> RunFacts:
        raw = msgpack.unpackb(blob, raw=False)
        return cls(tuple(raw["labels"]), raw["audit"])


def audited_here(request: Hello, cfg: ExperimentConfig, settings: NodeSettings) -> str:
    """The audit settings this node must build its client with ("" when the run audits another client or none);
    ConfigError when this node is the audited one but never agreed to be (node-config ``audit``: the audit holds
    half its records out, inserts secrets and canaries, may break its DP on purpose, and sends its update to the
    researcher), serves an organisation's own data (the researcher must hold the audited records to score them), or
    keeps a ledger file. So the server's settings, a mechanism fault included, can only ever reach a node that agreed
    and serves the config's own (public) partition, and never a budget that outlives the run."""
    if not request.audit:
        return ""
    from privfed.audit.settings import AuditSettings

    try:
        audit = AuditSettings.from_dict(json.loads(request.audit))
    except json.JSONDecodeError as err:
        raise ConfigError("audit", f"the server's audit settings are not JSON: {err}") from None
    if audit.client != settings.client_id:
        return ""
    if not settings.audit:
        raise ConfigError("node-config", f"the run audits client {settings.client_id}; a node carries the audit "
                                         "(members held out, secrets and canaries inserted, its update sent to the "
                                         "researcher) only with audit=true in its own node config")
    if settings.partition_id is None:
        raise ConfigError("audit", "the audited node serves a partition of the config's data (partition-id): the "
                                   "researcher scores the audit on the same records, never an organisation's own")
    if settings.ledger:
        raise ConfigError("audit", "the audited node keeps its ledger for the run only (no ledger file): its canaries "
                                   "and any injected fault must not enter a budget that outlives the run")
    return request.audit


class NodeLedger:
    """The node's ledger: a JSONL file kept across runs (locked while a message uses it), or (no file configured)
    Flower's state for one run.

    The file belongs to the data holder, not to a federation: every DP-SGD event in it counts towards the budget,
    whatever client id a federation gave the node then. :meth:`open` returns it re-keyed to the current client.
    """

    def __init__(self, settings: NodeSettings, state: MutableMapping[str, bytes]):
        self.path = Path(settings.ledger) if settings.ledger else None
        self.state = state
        self._recorded: list = []  # the events as stored, before re-keying
        self._lock = None

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def __enter__(self) -> Self:
        if self.path is not None:  # two runs (or two nodes) sharing a file must not both pass one budget check
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path.with_suffix(self.path.suffix + ".lock"), "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def open(self, client: int) -> Ledger:
        if self.path is not None:
            stored = Ledger.read(self.path) if self.path.exists() else Ledger()
        else:
            raw = self.state.get(LEDGER_KEY)
            stored = Ledger.from_dicts(msgpack.unpackb(raw, raw=False)) if raw else Ledger()
        self._recorded = list(stored.events)
        return Ledger(replace(e, client=client) for e in stored.events)

    def save(self, ledger: Ledger) -> None:
        """Store the events appended to what :meth:`open` returned, after the ones already stored."""
        ledger = Ledger([*self._recorded, *ledger.events[len(self._recorded):]])
        if self.path is not None:
            ledger.write(self.path)
            with open(self.path, "rb") as f:  # on disk before anything derived from the update leaves
                os.fsync(f.fileno())
        else:
            self.state[LEDGER_KEY] = msgpack.packb(ledger.to_dicts(), use_bin_type=True)


def node_config_of(cfg: ExperimentConfig, settings: NodeSettings) -> ExperimentConfig:
    """The config as the node builds its data: the config's own (a partition) or the node's file as one client."""
    if settings.partition_id is not None:
        return cfg
    data = replace(cfg.data, source=settings.data_path, clients=(), client_column="")
    return replace(cfg, data=data, partition=replace(cfg.partition, scheme=Partition.IID, num_clients=1))


_built: dict[tuple, Any] = {}  # fingerprint of the node's config -> its Federation (simulation workers reuse it)


def node_federation(cfg: ExperimentConfig, settings: NodeSettings, facts: RunFacts):
    """The node's model and data (privfed.federation.setup.Federation), built once per process. Partitions of one
    config share it: a simulation worker serving many virtual nodes builds it once. A node's own file is labelled
    with the federation's ``label_names`` (it may hold only some classes)."""
    node_cfg = node_config_of(cfg, settings)
    own_file = settings.partition_id is None
    label_names = facts.label_names
    key = (fingerprint(node_cfg), label_names if own_file else (), facts.audit)
    if key not in _built:
        _built.clear()  # one model per process, never two
        start = time.perf_counter()
        from privfed.federation.setup import build_federation  # torch, transformers, Opacus: part of building

        fed = build_federation(node_cfg, label_names if own_file and label_names else None)
        if facts.audit:  # the audited client, prepared exactly as the researcher's server prepares it
            from privfed.audit.settings import AuditSettings
            from privfed.audit.target import prepare_target

            prepare_target(fed, AuditSettings.from_dict(json.loads(facts.audit)))
        _plans.clear()
        if cfg.attack.kind is not AttackKind.NONE:  # the same seeded poisoning as the server's and privfed run's
            from privfed.attacks.clients import MaliciousClients
            from privfed.attacks.data import poison_federation

            poisoned, _ = poison_federation(fed)
            _plans[key] = MaliciousClients(cfg, poisoned, clients_per_round(cfg, len(fed.clients)))
        _built[key] = fed
        _build_seconds[0] += time.perf_counter() - start
    return _built[key]


_plans: dict[tuple, Any] = {}  # the built federation's key -> its attack plan (a config with an attack)


def node_procedure(cfg: ExperimentConfig, settings: NodeSettings, facts: RunFacts) -> ClientProcedure:
    """The client procedure this node runs (privfed.client.procedure), building its model only when a message
    trains or evaluates: honest, or — where the node's own config allows it (simulate-attack) — the config's attack
    (a malicious node is a node running the attack on its partition)."""
    honest = ClientProcedure(cfg, lambda: node_federation(cfg, settings, facts))
    if cfg.attack.kind is AttackKind.NONE or not settings.simulate_attack:
        return honest
    from privfed.attacks.clients import MaliciousProcedure

    node_federation(cfg, settings, facts)  # builds the attack plan with the federation
    return MaliciousProcedure(honest, next(iter(_plans.values())))


_build_seconds = [0.0]  # this process's time spent building, read (and reset) by step() for NodeTimes


_messages_handled = [0]


def mark_warm() -> None:
    """This process outlives messages (a warm worker): its start-up is not charged to the first message."""
    _messages_handled[0] = max(_messages_handled[0], 1)


def start_up_seconds() -> float:
    """For the first message a process handles, the seconds since it started (its start-up and imports: with stock
    Flower each message of a deployment gets a new ClientApp process); 0 for later messages of a reused process
    (simulation, a warm worker)."""
    _messages_handled[0] += 1
    return max(0.0, time.time() - psutil.Process().create_time()) if _messages_handled[0] == 1 else 0.0


def _node_client(cfg: ExperimentConfig, settings: NodeSettings, facts: RunFacts) -> ClientState:
    fed = node_federation(cfg, settings, facts)
    if settings.partition_id is None:
        return replace(fed.clients[0], id=settings.client_id)
    if settings.partition_id >= len(fed.clients):
        raise ConfigError("node-config", f"partition-id {settings.partition_id}, but the config splits the data into "
                                         f"{len(fed.clients)} clients (0-{len(fed.clients) - 1})")
    return fed.clients[settings.partition_id]


def _pack_client(client: ClientState) -> bytes:
    return msgpack.packb({"id": client.id, "shard": client.shard.astype(np.int64).tobytes(),
                          "sample_rate": client.sample_rate, "noise_multiplier": client.noise_multiplier},
                         use_bin_type=True)


def _unpack_client(blob: bytes) -> ClientState:
    raw = msgpack.unpackb(blob, raw=False)
    return ClientState(raw["id"], np.frombuffer(raw["shard"], dtype=np.int64).copy(), raw["sample_rate"],
                       raw["noise_multiplier"])


def hello(cfg: ExperimentConfig, settings: NodeSettings, request: Hello,
          state: MutableMapping[str, bytes]) -> HelloReply:
    """Check the run, build the node's data once, and say which client is here, how large and how spent it is."""
    problem = stamp_problem(request.stamp, cfg, settings)
    if problem:
        return HelloReply(Status.REFUSED, settings.client_id, reason=problem)
    try:
        if cfg.attack.kind is not AttackKind.NONE and settings.partition_id is None:
            raise ConfigError("attack.kind", "an attack simulation runs on nodes that serve a partition of the "
                                             "config's data (partition-id), not on an organisation's own data")
        if cfg.attack.kind is not AttackKind.NONE and settings.client_id in cfg.attack.clients \
                and not settings.simulate_attack:  # else a server's config could switch off a node's budget
            raise ConfigError("attack.clients", f"the run's config makes client {settings.client_id} an attacker; "
                                                "a node runs the attack only with simulate-attack=true in its own "
                                                "node config")
        identity = settings.identity(cfg)
        aggregation = settings.aggregation(cfg)
        facts = RunFacts(request.label_names, audited_here(request, cfg, settings))
        client = _node_client(cfg, settings, facts)
    except ConfigError as err:
        return HelloReply(Status.REFUSED, settings.client_id, reason=str(err))
    paillier = PaillierKey.load(aggregation.key_file).fingerprint if aggregation.key_file else ""
    state[CLIENT_KEY] = _pack_client(client)
    state[FACTS_KEY] = facts.pack()
    with NodeLedger(settings, state) as ledger:
        spent = epsilon_of_events(ledger.open(client.id).dp_sgd(client.id), cfg.privacy.delta,
                                  cfg.privacy.accountant)
    return HelloReply(Status.OK, client.id, client.num_examples, float(spent), ledger.persistent,
                      directory="" if identity is None else directory_digest(identity[1]), paillier=paillier)


_backends: dict[tuple, AggregationBackend] = {}


def _backend(cfg: ExperimentConfig, request: Step, settings: NodeSettings) -> AggregationBackend:
    """The node's aggregation back-end for the step's purpose (the round's update, or its federated evaluation),
    sized as the server's (the sizes travel with every step), holding the node's identity when the consistency
    check needs one. Back-ends of another config are closed."""
    key = (fingerprint(cfg), request.max_clients, request.vector_length, request.evaluation)
    if key not in _backends:
        for stale in [k for k in _backends if k[0] != key[0]]:
            _backends.pop(stale).close()
        aggregation = settings.aggregation(cfg)
        _backends[key] = make_backend(
            evaluation_aggregation(aggregation) if request.evaluation else aggregation,
            max_clients=request.max_clients, vector_length=request.vector_length, client_ids=[request.client],
            distributed=None if request.evaluation else DistributedDp.from_privacy(cfg.privacy), progress=False,
            side=Side.CLIENT)
    identity = settings.identity(cfg)
    if identity is not None:
        _backends[key].install_identity(settings.client_id, *identity)
    return _backends[key]


def _saved_half(backend: AggregationBackend, state: MutableMapping[str, bytes], key: str, round_key: str,
                round_idx: int, what: str) -> ClientHalf | StepReply:
    """The half the round's previous message saved under ``key``, or the reply that leaves the round without it."""
    if key not in state or int(state[round_key]) != round_idx:
        return StepReply(Status.LEFT, reason=f"no saved {what} state for round {round_idx}")
    try:
        return backend.restore_client(state[key])
    except ProtocolError as err:
        return StepReply(Status.LEFT, reason=f"unreadable {what} state ({err})")


def step(cfg: ExperimentConfig, settings: NodeSettings, request: Step, state: MutableMapping[str, bytes]) -> StepReply:
    """One protocol message of a round: the client half's reply, after local training when the message asks for the
    client's input. The node checks its budget against its ledger in the round's first message and again right
    before training, trains at most once a round, and ignores rounds older than the newest it has seen; the half's
    state is saved for the round's next message."""
    started = start_up_seconds()
    problem = stamp_problem(request.stamp, cfg, settings)
    if problem:
        return StepReply(Status.REFUSED, reason=problem)
    if CLIENT_KEY not in state:
        return StepReply(Status.LEFT, reason="this node never answered the run's hello")
    client = _unpack_client(state[CLIENT_KEY])
    if request.client != client.id:
        return StepReply(Status.LEFT, reason=f"a message for client {request.client} reached client {client.id}")
    newest = int(state[ROUND_KEY]) if ROUND_KEY in state else 0
    if request.round < newest:
        return StepReply(Status.LEFT, reason=f"a message of round {request.round}, but round {newest} has begun")
    if request.evaluation:
        try:
            return _evaluation_step(cfg, settings, request, state, client, started)
        except ConfigError as err:
            return StepReply(Status.REFUSED, reason=str(err))
    with NodeLedger(settings, state) as ledger_store:
        try:
            return _step(cfg, settings, request, state, client, ledger_store, started)
        except PrivacyViolationError as err:  # stops the run, as in process: never a silent dropout
            return StepReply(Status.REFUSED, reason=f"privacy check failed on the node: {err}")
        except ConfigError as err:  # e.g. its identity files became unreadable after the hello: stop, with why
            return StepReply(Status.REFUSED, reason=str(err))


def _step(cfg: ExperimentConfig, settings: NodeSettings, request: Step, state: MutableMapping[str, bytes],
          client: ClientState, ledger_store: NodeLedger, started: float) -> StepReply:
    backend = _backend(cfg, request, settings)
    ledger = ledger_store.open(client.id)
    facts = RunFacts.unpack(state[FACTS_KEY])
    procedure = node_procedure(cfg, settings, facts)

    def refused() -> StepReply | None:
        skipped = procedure.refusal(client, ledger, request.round)
        if skipped is None:
            return None
        ledger_store.save(ledger)
        return StepReply(Status.SKIPPED, skipped=skipped)

    if request.first:
        state[ROUND_KEY] = str(request.round).encode()
        skip = refused()
        if skip is not None:
            return skip
        half = procedure.half(backend.client_half(request.round, client.id), request.round)
    else:
        restored = _saved_half(backend, state, HALF_KEY, HALF_ROUND_KEY, request.round, "protocol")
        if isinstance(restored, StepReply):
            return restored
        half = procedure.half(restored, request.round)
    trained, event, train_seconds, audited_update = None, None, 0.0, None
    _build_seconds[0] = 0.0
    tick = time.perf_counter()
    if request.wants_input:
        if TRAINED_KEY in state and int(state[TRAINED_KEY]) == request.round:
            return StepReply(Status.LEFT, reason=f"this node already trained in round {request.round}")
        skip = None if request.first else refused()  # again: the node's budget never trusts the server's "first"
        if skip is not None:
            return skip
        procedure.fed.runtime.run_seed = cfg.seed if settings.reproducible else int.from_bytes(os.urandom(8), "little")
        state[TRAINED_KEY] = str(request.round).encode()
        train_start = time.perf_counter()
        result = procedure.train(client, request.round, request.global_vector, ledger)
        train_seconds = time.perf_counter() - train_start
        ledger_store.save(ledger)  # the event is on disk before anything derived from the update leaves the node
        update = result.update
        half.set_update(procedure.upload(update, request.round, request.weight_cap))
        trained = Trained(update.num_examples, update.train_loss, update.steps, update.seconds)
        event = result.event
        if facts.audit:  # the audited node is the researcher's instrument: its own update goes to the audit
            audited_update = update.delta
    try:
        reply = half.handle(request.payload)
    except ProtocolError as err:
        return StepReply(Status.LEFT, reason=f"protocol error: {err}", trained=trained, event=event)
    share = half.noise_spent()
    if share is not None and (NOISE_KEY not in state or int(state[NOISE_KEY]) != request.round):
        # the masked input has left: its noise share is spent whether or not this round's sum completes
        ledger.append(share.event(client.id, request.round))
        ledger_store.save(ledger)
        state[NOISE_KEY] = str(request.round).encode()
    state[HALF_KEY] = half.export_state()
    state[HALF_ROUND_KEY] = str(request.round).encode()
    protocol = time.perf_counter() - tick - train_seconds - _build_seconds[0]
    times = NodeTimes(started, _build_seconds[0], train_seconds, max(0.0, protocol))
    return StepReply(Status.OK, reply, pack_report(half.report()), trained, event, times=times,
                     update=audited_update)


def _evaluation_step(cfg: ExperimentConfig, settings: NodeSettings, request: Step, state: MutableMapping[str, bytes],
                     client: ClientState, started: float) -> StepReply:
    """A message of the round's federated evaluation: the node scores the new global model on its own held-out
    records and sends the sums through its evaluation half (privfed.federation.held_out). It touches no ledger:
    evaluating trains nothing and spends no DP budget (the totals' release is not in epsilon)."""
    backend = _backend(cfg, request, settings)
    if request.first:
        half = backend.client_half(request.round, client.id)
    else:
        restored = _saved_half(backend, state, EVAL_HALF_KEY, EVAL_HALF_ROUND_KEY, request.round, "evaluation")
        if isinstance(restored, StepReply):
            return restored
        half = restored
    _build_seconds[0] = 0.0
    tick = time.perf_counter()
    evaluate_seconds = 0.0
    if request.wants_input:
        if EVALUATED_KEY in state and int(state[EVALUATED_KEY]) >= request.round:
            # one evaluation input a round: sums over two cohorts would differ by one client's exact sums
            return StepReply(Status.LEFT, reason=f"this node already sent its evaluation of round {request.round}")
        state[EVALUATED_KEY] = str(request.round).encode()
        facts = RunFacts.unpack(state[FACTS_KEY])
        node_federation(cfg, settings, facts)  # built (and its time counted) before the clock starts
        procedure = node_procedure(cfg, settings, facts)
        evaluate_start = time.perf_counter()
        own = settings.partition_id if settings.partition_id is not None else 0  # its index in the node's federation
        half.set_update(procedure.evaluation_input(own, request.global_vector, request.weight_cap))
        evaluate_seconds = time.perf_counter() - evaluate_start
    try:
        reply = half.handle(request.payload)
    except ProtocolError as err:
        return StepReply(Status.LEFT, reason=f"protocol error: {err}")
    state[EVAL_HALF_KEY] = half.export_state()
    state[EVAL_HALF_ROUND_KEY] = str(request.round).encode()
    protocol = time.perf_counter() - tick - evaluate_seconds - _build_seconds[0]
    times = NodeTimes(started, _build_seconds[0], evaluate_seconds, max(0.0, protocol))
    return StepReply(Status.OK, reply, pack_report(half.report()), times=times)
