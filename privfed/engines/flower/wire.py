"""What privfed's ServerApp and ClientApp say to each other, as Flower RecordDicts.

Two requests: ``Hello`` (once per run and node: same privfed, same config, which client is here) and ``Step`` (one
protocol message of a round; the one asking for the client's input also carries the global model). Small fields
travel in a ConfigRecord; protocol bytes and the global vector travel as arrays, which Flower splits into chunks
(it does not split ConfigRecord bytes). Every request is stamped with the server's privfed version and config
fingerprint, and the node refuses anything not stamped like its own.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from privfed.config import ExperimentConfig, to_dict
from privfed.privacy.ledger import DpSgdEvent, SkippedEvent

HEADER, PAYLOAD, GLOBAL, UPDATE = "privfed", "privfed.payload", "privfed.global", "privfed.update"
QUERY, TRAIN = "query", "train"  # Flower message types: protocol steps, and the step that trains


class WireError(ValueError):
    """A record that is not a privfed message of the expected kind."""


class Kind(enum.Enum):
    HELLO = "hello"
    STEP = "step"


class Status(enum.Enum):
    OK = "ok"  # the reply carries the client's protocol message
    SKIPPED = "skipped"  # the client's budget refused the round (its SkippedEvent is attached)
    LEFT = "left"  # the client left the round (a protocol error on its side): ``reason`` says why
    REFUSED = "refused"  # the node refuses the run (another privfed version or config): ``reason`` says why


def fingerprint(cfg: ExperimentConfig) -> str:
    """A short hash of the whole config, as both sides parse it: equal exactly when they would run the same thing."""
    text = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stamp:
    version: str  # privfed.__version__ of the sender
    config: str  # fingerprint() of the sender's config


@dataclass(frozen=True)
class Hello:
    stamp: Stamp
    label_names: tuple[str, ...] = ()  # the federation's classes: a node's own file may hold only some
    audit: str = ""  # an audit run's settings (privfed.audit.settings.AuditSettings.as_dict, as JSON); "" none


@dataclass(frozen=True)
class HelloReply:
    status: Status
    client: int = -1
    num_examples: int = 0
    epsilon_spent: float = 0.0  # the node's epsilon before this run, from its ledger (every run it took part in)
    ledger_file: bool = False  # False: the ledger lives in Flower's node state, for this run only
    reason: str = ""
    directory: str = ""  # the digest of the node's directory of identity keys ("" without the consistency check)
    paillier: str = ""  # the fingerprint of the node's Paillier key pair ("" unless aggregation is paillier)


@dataclass(frozen=True)
class Step:
    stamp: Stamp
    round: int
    client: int
    first: bool  # the client's first message of the round: it checks its budget now
    wants_input: bool  # the reply must carry the client's input: it trains first
    vector_length: int  # the back-end's sizing, so a node needs no model for steps that do not train
    max_clients: int
    weight_cap: int  # the public FedAvg weight cap (largest client's example count)
    payload: bytes
    global_vector: np.ndarray | None = None  # only when wants_input
    evaluation: bool = False  # a message of the round's federated evaluation (the new model on held-out records)


@dataclass(frozen=True)
class Trained:
    """What the server may know of a client's local training (never the update itself)."""

    num_examples: int
    train_loss: float
    steps: int
    seconds: float


@dataclass(frozen=True)
class NodeTimes:
    """Where a node's time went in one message (seconds): the message's process start and imports, building the
    model and data (0 when the process had them), local training, and the protocol half's work."""

    process_start: float = 0.0
    build: float = 0.0
    train: float = 0.0
    protocol: float = 0.0


@dataclass(frozen=True)
class StepReply:
    status: Status
    payload: bytes = b""
    report: bytes = b""  # the client half's packed report (privfed.aggregation.base.pack_report)
    trained: Trained | None = None
    event: DpSgdEvent | None = None
    skipped: SkippedEvent | None = None
    reason: str = ""
    times: NodeTimes = NodeTimes()
    update: np.ndarray | None = None  # the audited node's own update, for the researcher (audit runs only)


def _bytes_array(raw: bytes) -> ArrayRecord:
    return ArrayRecord(numpy_ndarrays=[np.frombuffer(raw, dtype=np.uint8).copy()])


def _array_bytes(record: ArrayRecord) -> bytes:
    return record.to_numpy_ndarrays()[0].astype(np.uint8, copy=False).tobytes()


def _header(content: RecordDict, kind: Kind) -> ConfigRecord:
    try:
        header = content[HEADER]
    except KeyError:
        raise WireError("not a privfed message (no header)") from None
    if not isinstance(header, ConfigRecord) or header.get("kind") != kind.value:
        raise WireError(f"expected a privfed {kind.value} message")
    return header


def _optional_json(value: str, cls: type) -> object | None:
    return cls(**json.loads(value)) if value else None


def encode_hello(hello: Hello) -> RecordDict:
    return RecordDict({HEADER: ConfigRecord({"kind": Kind.HELLO.value, "version": hello.stamp.version,
                                             "config": hello.stamp.config,
                                             "label_names": json.dumps(list(hello.label_names)),
                                             "audit": hello.audit})})


def decode_hello(content: RecordDict) -> Hello:
    h = _header(content, Kind.HELLO)
    return Hello(Stamp(str(h["version"]), str(h["config"])), tuple(json.loads(str(h["label_names"]))),
                 str(h.get("audit", "")))


def encode_hello_reply(reply: HelloReply) -> RecordDict:
    return RecordDict({HEADER: ConfigRecord({"kind": Kind.HELLO.value, **asdict(reply), "status": reply.status.value})})


def decode_hello_reply(content: RecordDict) -> HelloReply:
    h = _header(content, Kind.HELLO)
    return HelloReply(Status(h["status"]), int(h["client"]), int(h["num_examples"]), float(h["epsilon_spent"]),
                      bool(h["ledger_file"]), str(h["reason"]), str(h["directory"]), str(h["paillier"]))


def encode_step(step: Step) -> RecordDict:
    header = {"kind": Kind.STEP.value, "version": step.stamp.version, "config": step.stamp.config,
              "round": step.round, "client": step.client, "first": step.first, "wants_input": step.wants_input,
              "vector_length": step.vector_length, "max_clients": step.max_clients, "weight_cap": step.weight_cap,
              "evaluation": step.evaluation}
    records: dict = {HEADER: ConfigRecord(header), PAYLOAD: _bytes_array(step.payload)}
    if step.global_vector is not None:
        records[GLOBAL] = ArrayRecord(numpy_ndarrays=[np.asarray(step.global_vector, dtype=np.float32)])
    return RecordDict(records)


def decode_step(content: RecordDict) -> Step:
    h = _header(content, Kind.STEP)
    vector = content[GLOBAL].to_numpy_ndarrays()[0] if GLOBAL in content else None
    step = Step(Stamp(str(h["version"]), str(h["config"])), int(h["round"]), int(h["client"]), bool(h["first"]),
                bool(h["wants_input"]), int(h["vector_length"]), int(h["max_clients"]), int(h["weight_cap"]),
                _array_bytes(content[PAYLOAD]), vector, bool(h["evaluation"]))
    if step.wants_input and vector is None:
        raise WireError("a step asking for the client's input must carry the global model")
    return step


def encode_step_reply(reply: StepReply) -> RecordDict:
    header = {"kind": Kind.STEP.value, "status": reply.status.value, "report": reply.report, "reason": reply.reason,
              "trained": json.dumps(asdict(reply.trained)) if reply.trained else "",
              "event": json.dumps(asdict(reply.event)) if reply.event else "",
              "skipped": json.dumps(asdict(reply.skipped)) if reply.skipped else "",
              "times": json.dumps(asdict(reply.times))}
    records: dict = {HEADER: ConfigRecord(header), PAYLOAD: _bytes_array(reply.payload)}
    if reply.update is not None:
        records[UPDATE] = ArrayRecord(numpy_ndarrays=[np.asarray(reply.update, dtype=np.float32)])
    return RecordDict(records)


def decode_step_reply(content: RecordDict) -> StepReply:
    h = _header(content, Kind.STEP)
    return StepReply(Status(h["status"]), _array_bytes(content[PAYLOAD]), bytes(h["report"]),
                     _optional_json(str(h["trained"]), Trained), _optional_json(str(h["event"]), DpSgdEvent),
                     _optional_json(str(h["skipped"]), SkippedEvent), str(h["reason"]),
                     NodeTimes(**json.loads(str(h["times"]))),
                     content[UPDATE].to_numpy_ndarrays()[0] if UPDATE in content else None)
