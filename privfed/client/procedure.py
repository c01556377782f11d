"""One client's part of a round, the same on every engine: budget check, local training, what it hands to the secure
sum, its protocol half, and its federated evaluation.

The in-process engine runs it for each client in turn on the federation's one runtime; a Flower node runs it for
its own client on its own federation (Flower's simulation too). Engines add only what their place demands — a node
restores its protocol half and its ledger per message and saves them again — and never branch on what a client
is: malicious clients are a procedure that wraps this one (:class:`privfed.attacks.clients.MaliciousProcedure`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from privfed.client import budget
from privfed.client.recorded import train_recorded
from privfed.client.runtime import TrainedRound
from privfed.client.state import ClientState, ClientUpdate
from privfed.config import ExperimentConfig
from privfed.evaluation import evaluation_sums
from privfed.federation.held_out import evaluation_contribution, evaluation_scale
from privfed.privacy.ledger import Ledger, SkippedEvent

if TYPE_CHECKING:
    from privfed.aggregation.base import ClientHalf
    from privfed.federation.setup import Federation


def contribution(cfg: ExperimentConfig, delta: np.ndarray, num_examples: int, weight_cap: int) -> np.ndarray:
    """What a client hands to aggregation: ``[w * delta, w]``, so the sum gives the weighted mean update.

    FedAvg weights w = n_i / n_max (n_max, the largest client, plays the public weight cap of DP-FedAvg) keep every
    transmitted value within the encoding's range. Under distributed DP every update is weighted 1 — a client's
    influence on the sum must be bounded whatever its size — and the secagg client half clips it to the round's L2
    norm S (which it learns from SETUP: adaptive clipping moves S). With ``defence.client_clip`` honest code clips
    the update to that norm first (a defence that trusts client code).
    """
    if cfg.privacy.distributed_noise > 0:
        return np.append(delta.astype(np.float64), 1.0)
    if cfg.defence.client_clip > 0:  # honest client code bounds its own update (a malicious client would not)
        delta = clip_norm(delta, cfg.defence.client_clip)
    weight = num_examples / weight_cap
    return np.append(delta.astype(np.float64) * weight, weight)


def clip_norm(vector: np.ndarray, bound: float) -> np.ndarray:
    """``vector`` scaled down to L2 norm ``bound`` if it is longer."""
    norm = float(np.linalg.norm(vector))
    return vector * min(1.0, bound / norm) if norm > 0 else vector


class ClientProcedure:
    """An honest client's round on ``federation``'s runtime (the in-process federation, or a node's own). A node
    passes a function that builds its federation on first use: of a round's messages, only the one that trains
    (or evaluates) needs the model."""

    def __init__(self, cfg: ExperimentConfig, federation: Federation | Callable[[], Federation]):
        self.cfg = cfg
        self._federation = federation

    @property
    def fed(self) -> Federation:
        if callable(self._federation):
            self._federation = self._federation()
        return self._federation

    def refusal(self, client: ClientState, ledger: Ledger, round_idx: int) -> SkippedEvent | None:
        """The client's own budget check before it trains: the refusal (also appended to ``ledger``), or None."""
        event = budget.refusal(client, ledger, round_idx, self.cfg.training.local_steps, self.cfg.privacy)
        if event is not None:
            ledger.append(event)
        return event

    def half(self, half: ClientHalf, round_idx: int) -> ClientHalf:
        """The client's protocol half as its code runs it this round (a fresh or a restored one)."""
        return half

    def train(self, client: ClientState, round_idx: int, global_vector: np.ndarray, ledger: Ledger) -> TrainedRound:
        """Local training from ``global_vector`` (DP-SGD when the run has it); its DP event goes to ``ledger``."""
        return self.train_as(client, round_idx, global_vector, ledger)

    def train_as(self, client: ClientState, round_idx: int, global_vector: np.ndarray, ledger: Ledger,
                 local_steps: int | None = None) -> TrainedRound:
        """:meth:`train` on ``client``'s records (``local_steps``: None, the config's)."""
        return train_recorded(self.fed.runtime, client, self.fed.shard(client), round_idx, global_vector, ledger,
                              local_steps)

    def upload(self, update: ClientUpdate, round_idx: int, weight_cap: int) -> np.ndarray:
        """What the client hands to the secure sum: its :func:`contribution`."""
        return contribution(self.cfg, update.delta, update.num_examples, weight_cap)

    def evaluation_input(self, held_out: int, global_vector: np.ndarray, weight_cap: int) -> np.ndarray:
        """The client's federated-evaluation contribution: ``global_vector`` scored on its held-out records
        (``held_out``: their index in the federation). Honest on every client: evaluation is not attacked."""
        runtime = self.fed.runtime
        runtime.load(global_vector)
        sums = evaluation_sums(runtime.model, self.fed.held_out(held_out), self.fed.task, explicit=runtime.explicit)
        return evaluation_contribution(sums, evaluation_scale(self.cfg, self.fed.task, weight_cap))
