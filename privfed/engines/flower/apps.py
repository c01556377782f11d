"""privfed's Flower ServerApp and ClientApp, driven by one privfed config carried in the run config.

``privfed flower app`` writes a Flower app folder whose pyproject.toml points at ``server_app`` and ``client_app``
here and embeds the experiment config (as JSON) in ``[tool.flwr.app.config]``. The ServerApp runs privfed's round
driver with its callbacks (evaluation, ε report, checkpoints, results) and reaches the clients as nodes; each
ClientApp serves one client from its node's own data and ledger (see :mod:`privfed.engines.flower.node`).
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

import privfed
from privfed.config import Aggregation, AttackKind, EvaluationSite, ExperimentConfig, from_dict
from privfed.engines.flower import node
from privfed.engines.flower.wire import (
    HEADER,
    HelloReply,
    Kind,
    Status,
    StepReply,
    decode_hello,
    decode_step,
    encode_hello_reply,
    encode_step_reply,
    fingerprint,
)
from privfed.errors import ConfigError

log = logging.getLogger(__name__)

# keys of [tool.flwr.app.config]; AUDIT_KEY: an audit run's settings as JSON ("" for a plain run)
CONFIG_KEY, OUT_KEY, RESUME_KEY, AUDIT_KEY = "privfed-config", "out-dir", "resume", "privfed-audit"


@functools.lru_cache(maxsize=4)
def _parse(text: str) -> ExperimentConfig:
    return from_dict(json.loads(text))


def config_of_run(run_config: dict) -> ExperimentConfig:
    """The experiment config embedded in a Flower run config (ConfigError when absent or invalid)."""
    text = run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text:
        raise ConfigError(CONFIG_KEY, "the Flower run config carries no privfed config: write the app folder with "
                                      "`privfed flower app`")
    try:
        return _parse(text)
    except json.JSONDecodeError as err:
        raise ConfigError(CONFIG_KEY, f"is not JSON: {err}") from None


def check_flower_support(cfg: ExperimentConfig) -> None:
    """Refuse what the Flower engine cannot do yet, with the reason."""
    if cfg.data.validation_fraction > 0 and cfg.evaluation.where is EvaluationSite.SERVER:
        raise ConfigError("data.validation_fraction", "over Flower the clients' held-out split serves federated "
                                                      "evaluation (evaluation.where clients or both), which the "
                                                      "server never pools; tuning on it runs in process (privfed "
                                                      "sweep --tune)")


def check_flower_simulation(cfg: ExperimentConfig, audit: bool = False) -> None:
    """Refuse what Flower's simulation runtime cannot do on top of :func:`check_flower_support` (``audit``: an audit
    run of ``cfg``), with the reason."""
    if audit:
        raise ConfigError("audit", "the audited node agrees to carry the audit (its records split, canaries and "
                                   "secrets inserted, its update sent to the researcher) in its own node config "
                                   "(audit=true), which the simulation's virtual nodes lack: use privfed flower "
                                   "loopback --audit, or a deployment")
    if cfg.aggregation.consistency_check:
        raise ConfigError("aggregation.consistency_check", "Flower's simulation gives virtual nodes no node config "
                                                           "of their own, so no identity keys: use privfed flower "
                                                           "loopback, or a deployment with privfed flower identities")
    if cfg.attack.kind is not AttackKind.NONE:
        raise ConfigError("attack.kind", "an attacking node opts in through its own node config "
                                         "(simulate-attack=true), which the simulation's virtual nodes lack: use "
                                         "privfed flower loopback, or a deployment")
    if cfg.aggregation.method is Aggregation.PAILLIER:
        raise ConfigError("aggregation.method", "paillier over Flower gives each node the key pair in its own node "
                                                "config (paillier-key), which the simulation's virtual nodes lack: "
                                                "use privfed flower loopback, or a deployment")


# ---------------------------------------------------------------- ServerApp

server_app = ServerApp()


@dataclass(frozen=True)
class ServerRun:
    config: ExperimentConfig
    out_dir: Path
    resume: bool
    audit: str = ""  # AuditSettings as JSON: this run is an audit ("" a plain run)

    @classmethod
    def from_run_config(cls, run_config: dict) -> ServerRun:
        cfg = config_of_run(run_config)
        out = run_config.get(OUT_KEY) or f"runs/{cfg.name}-flower"
        run = cls(cfg, Path(str(out)), bool(run_config.get(RESUME_KEY, False)), str(run_config.get(AUDIT_KEY, "")))
        if run.audit and run.resume:
            raise ConfigError(RESUME_KEY, "an audit run cannot be resumed: run the audit again")
        if run.audit and not cfg.name.endswith("-audit"):  # never mistaken for (or written over) a plain run
            raise ConfigError(AUDIT_KEY, f"an audit runs the audited config (named <name>-audit), not {cfg.name!r}: "
                                         "write the app with privfed flower app --audit")
        return run


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    from privfed.engines.flower.clients import GridLink, run_over_link
    from privfed.results import RunDirectory, unused_run_dir

    run = ServerRun.from_run_config(context.run_config)
    cfg = run.config
    check_flower_support(cfg)
    out = run.out_dir if run.resume else unused_run_dir(run.out_dir)
    if run.resume and RunDirectory(out).load_checkpoint() is None:
        raise ConfigError(RESUME_KEY, f"{out} holds no checkpoint to resume")
    log.info("privfed %s ServerApp: config %s (%s), results in %s", privfed.__version__, fingerprint(cfg), cfg.name,
             out)
    if run.audit:
        from privfed.audit.settings import AuditSettings
        from privfed.engines.flower.clients import audit_over_link

        report = audit_over_link(cfg, out, GridLink(grid), AuditSettings.from_dict(json.loads(run.audit)))
        log.info("privfed audit of client %d finished (%d findings); report in %s", report.client, len(report.rows),
                 out)
        return
    results = run_over_link(cfg, out, GridLink(grid), resume=run.resume)
    log.info("privfed run %s finished after %d rounds; results in %s", cfg.name, results["rounds"][-1]["round"], out)


# ---------------------------------------------------------------- ClientApp

client_app = ClientApp()


class NodeState(MutableMapping[str, bytes]):
    """Flower's per-run node state (``context.state``) as a mapping of bytes, each value an array (Flower chunks
    arrays; a protocol half's state grows with the model)."""

    PREFIX = "privfed-node."

    def __init__(self, context: Context):
        self.records = context.state

    def __getitem__(self, key: str) -> bytes:
        try:
            record = self.records[self.PREFIX + key]
        except KeyError:
            raise KeyError(key) from None
        return record.to_numpy_ndarrays()[0].tobytes()

    def __setitem__(self, key: str, value: bytes) -> None:
        self.records[self.PREFIX + key] = ArrayRecord(numpy_ndarrays=[np.frombuffer(value, dtype=np.uint8).copy()])

    def __delitem__(self, key: str) -> None:
        del self.records[self.PREFIX + key]

    def __iter__(self) -> Iterator[str]:
        return (k[len(self.PREFIX):] for k in list(self.records) if k.startswith(self.PREFIX))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def handle(content, context: Context):
    """A node's answer to one privfed request (a RecordDict), as a RecordDict."""
    kind = content[HEADER].get("kind") if HEADER in content else None
    try:
        cfg = config_of_run(context.run_config)
        settings = node.NodeSettings.from_node_config(context.node_config)
    except ConfigError as err:
        if kind == Kind.HELLO.value:
            return encode_hello_reply(HelloReply(Status.REFUSED, reason=str(err)))
        return encode_step_reply(StepReply(Status.REFUSED, reason=str(err)))
    state = NodeState(context)
    if kind == Kind.HELLO.value:
        return encode_hello_reply(node.hello(cfg, settings, decode_hello(content), state))
    return encode_step_reply(node.step(cfg, settings, decode_step(content), state))


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    return Message(handle(msg.content, context), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    return Message(handle(msg.content, context), reply_to=msg)
