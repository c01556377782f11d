"""Nodes in this process behind a NodeLink: the Flower engine's whole message path (encoding, node state that
survives only as bytes, node ledgers, timeouts as silence) without starting Flower processes."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from flwr.app import Context, RecordDict

from privfed.config import ExperimentConfig, to_dict
from privfed.engines.flower.apps import CONFIG_KEY, handle
from privfed.engines.flower.clients import NodeLink


@dataclass
class LocalLink(NodeLink):
    """Node ids 100, 101, ...; ``node_configs[i]`` is node i's --node-config. ``silent(node, round, kind)`` makes a
    node answer nothing (a killed SuperNode); messages are deep-copied both ways, as on a wire."""

    cfg: ExperimentConfig
    node_configs: list[dict]
    silent: object = None
    contexts: dict = field(default_factory=dict)
    sent: list = field(default_factory=list)

    def __post_init__(self):
        run_config = {CONFIG_KEY: json.dumps(to_dict(self.cfg))}
        for i, node_config in enumerate(self.node_configs):
            self.contexts[100 + i] = Context(run_id=1, node_id=100 + i, node_config=dict(node_config),
                                             state=RecordDict(), run_config=dict(run_config))

    def node_ids(self):
        return sorted(self.contexts)

    def exchange(self, messages, timeout):
        replies = {}
        for node, (kind, content) in messages.items():
            self.sent.append((node, kind, content))
            if self.silent is not None and self.silent(node, content):
                continue
            replies[node] = copy.deepcopy(handle(copy.deepcopy(content), self.contexts[node]))
        return replies
