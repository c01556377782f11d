"""The node's side: one organisation's client, its data, its ledger and its half of every round's secure sum.

A SuperNode's ``node_config`` says which client it is and where its data and ledger are. Each Flower message may
start a new process, so everything that must outlive a message is plain data: the client's facts and the protocol
half's exported state in Flower's per-run node state, the ledger in a file that also outlives runs (the data holder
enforces its own epsilon budget across every run it takes part in). Only the step that trains builds the model.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil

import privfed
from privfed.aggregation import make_backend
from privfed.aggregation.base import AggregationBackend, ClientHalf, pack_report
from privfed.client import budget
from privfed.client.state import ClientState
from privfed.config import ExperimentConfig, Partition
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
from privfed.errors import ConfigError
from privfed.privacy.accounting import epsilon_of_events
from privfed.privacy.ledger import Ledger
from privfed.secure.messages import ProtocolError
from privfed.server.driver import contribution

log = logging.getLogger(__name__)

# what a node keeps in Flower's node state: its client's facts, its protocol half, its ledger (without a ledger
# file), and the federation's classes (from the server's hello)
CLIENT_KEY, HALF_KEY, LEDGER_KEY, LABELS_KEY = "client", "half", "ledger", "labels"


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's own settings, from ``--node-config`` (Flower's simulation sets partition-id by itself).

    ``partition-id``: a partition of the config's data (demos, simulation); or ``data-path``: the organisation's
    own file or folder, in any data.source format, with ``client-id``. ``ledger``: the privacy ledger file that
    outlives runs (absent: the ledger lives for one run only). ``approved-config``: the only config fingerprint this
    node accepts (absent: any config stamped like the node's own parse).
    """

    client_id: int
    partition_id: int | None = None
    data_path: str = ""
    ledger: str = ""
    approved_config: str = ""

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        known = {"partition-id", "num-partitions", "client-id", "data-path", "ledger", "approved-config"}
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
        return cls(int(client), None if partition is None else int(partition), data_path,
                   str(node_config.get("ledger", "")), str(node_config.get("approved-config", "")))


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


class NodeLedger:
    """The node's ledger: a JSONL file kept across runs, or (no file configured) Flower's state for one run."""

    def __init__(self, settings: NodeSettings, state: MutableMapping[str, bytes]):
        self.path = Path(settings.ledger) if settings.ledger else None
        self.state = state

    @property
    def persistent(self) -> bool:
        return self.path is not None

    def load(self) -> Ledger:
        if self.path is not None:
            return Ledger.read(self.path) if self.path.exists() else Ledger()
        raw = self.state.get(LEDGER_KEY)
        return Ledger.from_dicts(msgpack.unpackb(raw, raw=False)) if raw else Ledger()

    def save(self, ledger: Ledger) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ledger.write(self.path)
        else:
            self.state[LEDGER_KEY] = msgpack.packb(ledger.to_dicts(), use_bin_type=True)


def node_config_of(cfg: ExperimentConfig, settings: NodeSettings) -> ExperimentConfig:
    """The config as the node builds its data: the config's own (a partition) or the node's file as one client."""
    if settings.partition_id is not None:
        return cfg
    data = replace(cfg.data, source=settings.data_path, clients=(), client_column="")
    return replace(cfg, data=data, partition=replace(cfg.partition, scheme=Partition.IID, num_clients=1))


_built: dict[tuple, Any] = {}  # fingerprint of the node's config -> its Federation (simulation workers reuse it)


def node_federation(cfg: ExperimentConfig, settings: NodeSettings, label_names: tuple[str, ...]):
    """The node's model and data (privfed.federation.setup.Federation), built once per process. Partitions of one
    config share it: a simulation worker serving many virtual nodes builds it once. A node's own file is labelled
    with the federation's ``label_names`` (it may hold only some classes)."""
    from privfed.federation.setup import build_federation

    node_cfg = node_config_of(cfg, settings)
    own_file = settings.partition_id is None
    key = (fingerprint(node_cfg), label_names if own_file else ())
    if key not in _built:
        _built.clear()  # one model per process, never two
        start = time.perf_counter()
        _built[key] = build_federation(node_cfg, label_names if own_file and label_names else None)
        _build_seconds[0] += time.perf_counter() - start
    return _built[key]


_build_seconds = [0.0]  # this process's time spent building, read (and reset) by step() for NodeTimes


_messages_handled = [0]


def start_up_seconds() -> float:
    """For the first message a process handles, the seconds since it started (its start-up and imports: each
    message of a deployment gets a new ClientApp process); 0 for later messages of a reused process (simulation)."""
    _messages_handled[0] += 1
    return max(0.0, time.time() - psutil.Process().create_time()) if _messages_handled[0] == 1 else 0.0


def _node_client(cfg: ExperimentConfig, settings: NodeSettings, label_names: tuple[str, ...]) -> ClientState:
    fed = node_federation(cfg, settings, label_names)
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
        client = _node_client(cfg, settings, request.label_names)
    except ConfigError as err:
        return HelloReply(Status.REFUSED, settings.client_id, reason=str(err))
    state[CLIENT_KEY] = _pack_client(client)
    state[LABELS_KEY] = msgpack.packb(list(request.label_names))
    ledger = NodeLedger(settings, state)
    spent = epsilon_of_events(ledger.load().dp_sgd(client.id), cfg.privacy.delta, cfg.privacy.accountant)
    return HelloReply(Status.OK, client.id, client.num_examples, float(spent), ledger.persistent)


_backends: dict[tuple, AggregationBackend] = {}


def _backend(cfg: ExperimentConfig, request: Step) -> AggregationBackend:
    """The node's aggregation back-end, sized as the server's (the sizes travel with every step)."""
    key = (fingerprint(cfg), request.max_clients, request.vector_length)
    if key not in _backends:
        for old in _backends.values():
            old.close()
        _backends.clear()
        _backends[key] = make_backend(cfg.aggregation, max_clients=request.max_clients,
                                      vector_length=request.vector_length, client_ids=[request.client],
                                      distributed_noise=cfg.privacy.distributed_noise,
                                      update_clip=cfg.privacy.update_clip, progress=False)
    return _backends[key]


def step(cfg: ExperimentConfig, settings: NodeSettings, request: Step, state: MutableMapping[str, bytes]) -> StepReply:
    """One protocol message: the budget check (first message of a round), local training (the input message), the
    client half's reply; the half's state is saved for the round's next message."""
    started = start_up_seconds()
    problem = stamp_problem(request.stamp, cfg, settings)
    if problem:
        return StepReply(Status.REFUSED, reason=problem)
    if CLIENT_KEY not in state:
        return StepReply(Status.LEFT, reason="this node never answered the run's hello")
    client = _unpack_client(state[CLIENT_KEY])
    if request.client != client.id:
        return StepReply(Status.LEFT, reason=f"a message for client {request.client} reached client {client.id}")
    backend = _backend(cfg, request)
    ledger_store = NodeLedger(settings, state)
    ledger = ledger_store.load()
    if request.first:
        skipped = budget.refusal(client, ledger, request.round, cfg.training.local_steps, cfg.privacy)
        if skipped is not None:
            ledger_store.save(ledger)
            return StepReply(Status.SKIPPED, skipped=skipped)
        half: ClientHalf = backend.client_half(request.round, client.id)
    else:
        try:
            half = backend.restore_client(state[HALF_KEY])
        except (KeyError, ProtocolError) as err:
            return StepReply(Status.LEFT, reason=f"no saved protocol state for this round ({err})")
    trained, event, train_seconds = None, None, 0.0
    _build_seconds[0] = 0.0
    tick = time.perf_counter()
    if request.wants_input:
        from privfed.client.recorded import train_recorded

        fed = node_federation(cfg, settings, tuple(msgpack.unpackb(state[LABELS_KEY], raw=False)))
        train_start = time.perf_counter()
        result = train_recorded(fed.runtime, client, fed.shard(client), request.round, request.global_vector, ledger)
        train_seconds = time.perf_counter() - train_start
        ledger_store.save(ledger)  # the event is on disk before anything derived from the update leaves the node
        update = result.update
        half.set_update(contribution(cfg, update.delta, update.num_examples, request.weight_cap))
        trained = Trained(update.num_examples, update.train_loss, update.steps, update.seconds)
        event = result.event
    try:
        reply = half.handle(request.payload)
    except ProtocolError as err:
        return StepReply(Status.LEFT, reason=f"protocol error: {err}", trained=trained, event=event)
    state[HALF_KEY] = half.export_state()
    protocol = time.perf_counter() - tick - train_seconds - _build_seconds[0]
    times = NodeTimes(started, _build_seconds[0], train_seconds, max(0.0, protocol))
    return StepReply(Status.OK, reply, pack_report(half.report()), trained, event, times=times)
