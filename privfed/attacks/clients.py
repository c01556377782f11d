"""Malicious clients on the real client runtime and the real protocols.

Each attacking client trains on the federation's one runtime like any other (on its poisoned shard while it
attacks); what it then uploads depends on the attack:

* backdoor: its update boosted by ``attack.boost`` — model replacement (Bagdasaryan et al. 2020): scaled so that,
  averaged with the others, it replaces the global model;
* sign_flip: minus boost times its honest update; gaussian: Gaussian noise with boost times its update's norm;
* out_of_range: its update negated and scaled so its largest value is ``attack.range_factor`` times the clip
  range R; under secagg/paillier it bypasses the encoding and writes those integers straight into the protocol (a
  client's own code can), where honest encoding would have clipped them to [-R, R];
* label_flip, spread: nothing unusual — honest code, poisoned records (:mod:`privfed.attacks.data`).

Every attacker trains through the runtime like an honest client (with DP-SGD when the run has it: the runtime is
shared, so that is the conservative simulation — an attacker free to drop the noise would do at least as well);
model-poisoning clients then rewrite what they upload and skip ``defence.client_clip`` (their code is theirs).
After ``attack.last_round`` they behave honestly again, on their clean data, so a backdoor's persistence can be
measured.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from privfed.aggregation.base import AggregationBackend, ClientHalf
from privfed.aggregation.paillier import PaillierClientHalf
from privfed.aggregation.secagg import SecAggClientHalf
from privfed.client.procedure import ClientProcedure
from privfed.client.runtime import TrainedRound
from privfed.client.state import ClientState, ClientUpdate
from privfed.config import MALICIOUS_CODE, AttackKind, ExperimentConfig
from privfed.federation.vectors import derive_seed
from privfed.privacy.ledger import Ledger, SkippedEvent
from privfed.secure.encoding import EncodingStats
from privfed.secure.messages import ProtocolError


class MaliciousClients:
    """The attack plan: which client attacks in which round, on which poisoned records, with what boost (read by
    :class:`MaliciousProcedure`, which runs it, and by the attack's observer, which measures it)."""

    def __init__(self, cfg: ExperimentConfig, poisoned: Mapping[int, ClientState], clients_per_round: int):
        self.cfg, self.poisoned = cfg, dict(poisoned)
        self.attack = cfg.attack
        self.boost = self.attack.boost or clients_per_round / cfg.federation.server_lr
        # None: as many as honest clients (data poisoning runs honest code, which trains as configured)
        self.local_steps = (self.attack.local_steps or None) if self.attack.kind in MALICIOUS_CODE else None

    def attacking(self, client: int, round_idx: int) -> bool:
        a = self.attack
        return (a.kind is not AttackKind.NONE and client in a.clients and round_idx >= a.first_round
                and (a.last_round == 0 or round_idx <= a.last_round))

    def ignores_budget(self, client: int, round_idx: int) -> bool:
        """A client running malicious code trains whatever its own privacy budget says (its records, its loss)."""
        return self.attack.kind in MALICIOUS_CODE and self.attacking(client, round_idx)

    def state_for(self, client: int, round_idx: int) -> ClientState | None:
        """The client as it trains this round when attacking: its poisoned shard (None: its clean self)."""
        return self.poisoned.get(client) if self.attacking(client, round_idx) else None


class MaliciousProcedure(ClientProcedure):
    """The client procedure of a federation with attackers: ``honest`` for every client that does not attack this
    round, and for an attacking one what its own code does instead — it ignores its budget when it runs malicious
    code, trains on its poisoned records, rewrites its upload, and (out_of_range) bypasses the encoding. Its
    evaluation stays honest: the attack is on training."""

    def __init__(self, honest: ClientProcedure, plan: MaliciousClients):
        super().__init__(honest.cfg, lambda: honest.fed)
        self.honest, self.plan = honest, plan

    def refusal(self, client: ClientState, ledger: Ledger, round_idx: int) -> SkippedEvent | None:
        if self.plan.ignores_budget(client.id, round_idx):
            return None
        return self.honest.refusal(client, ledger, round_idx)

    def half(self, half: ClientHalf, round_idx: int) -> ClientHalf:
        half = self.honest.half(half, round_idx)
        if self.plan.attack.kind is AttackKind.OUT_OF_RANGE and self.plan.attacking(half.client_id, round_idx):
            return OutOfRangeHalf(half)
        return half

    def train(self, client: ClientState, round_idx: int, global_vector: np.ndarray, ledger: Ledger) -> TrainedRound:
        poisoned = self.plan.state_for(client.id, round_idx)
        if poisoned is None:
            return self.honest.train(client, round_idx, global_vector, ledger)
        return self.honest.train_as(poisoned, round_idx, global_vector, ledger, self.plan.local_steps)

    def upload(self, update: ClientUpdate, round_idx: int, weight_cap: int) -> np.ndarray:
        """What an attacking client uploads (see the module docstring); an honest one's contribution otherwise."""
        kind, delta = self.plan.attack.kind, update.delta
        if not self.plan.attacking(update.client, round_idx) or kind in (AttackKind.LABEL_FLIP, AttackKind.SPREAD):
            return self.honest.upload(update, round_idx, weight_cap)  # honest code (on poisoned records)
        boost = self.plan.boost
        if kind is AttackKind.BACKDOOR:
            sent = boost * delta
        elif kind is AttackKind.GAUSSIAN:
            rng = np.random.default_rng(derive_seed(self.cfg.seed, round_idx, update.client, 0x6A55))
            scale = boost * float(np.linalg.norm(delta)) / np.sqrt(max(delta.size, 1))
            sent = rng.normal(0.0, scale, delta.size)
        elif kind is AttackKind.OUT_OF_RANGE:  # largest transmitted value: range_factor x the clip range
            weight = min(1.0, update.num_examples / weight_cap)
            peak = float(np.max(np.abs(delta))) * weight
            scale = self.plan.attack.range_factor * self.cfg.aggregation.clip_range / peak if peak > 0 else 0.0
            sent = -scale * delta
        else:
            sent = -boost * delta
        weight = min(1.0, update.num_examples / weight_cap)  # at most the largest honest weight: boosting does the rest
        return np.append(np.asarray(sent, dtype=np.float64) * weight, weight)


class OutOfRangeHalf(ClientHalf):
    """A client half whose owner skips the encoding's clip: its update goes into the protocol as integers in the
    encoding's step, as large as the protocol's word (secagg) or slot (paillier) carries without wrapping alone.
    Under plain there is no encoding to bypass: the update goes as it is."""

    def __init__(self, half: ClientHalf):
        self.half = half
        self.client_id = half.client_id

    @property
    def bytes_sent(self) -> int:  # type: ignore[override]
        return self.half.bytes_sent

    @property
    def bytes_received(self) -> int:  # type: ignore[override]
        return self.half.bytes_received

    def set_update(self, vector: np.ndarray) -> None:
        values = np.array(vector, dtype=np.float64)
        if isinstance(self.half, SecAggClientHalf):
            encoding = self.half.backend.encoding
            limit = 2 ** (encoding.word_bits - 2)  # far past the clip, short of wrapping on its own
            values[-1] *= encoding.clip_range  # the weight travels in clip-range units, as honest encoding sends it
            ints = np.clip(np.rint(values / encoding.step), -limit, limit).astype(np.int64)
            self.half.set_quantised(ints, _stats(values))
        elif isinstance(self.half, PaillierClientHalf):
            backend = self.half.backend
            layout, step = backend.layout, backend.encoding.step
            values[-1] *= backend.encoding.clip_range  # the weight in clip-range units, as honest encoding sends it
            wide = dataclasses.replace(layout, value_bits=layout.slot_bits - 1)  # packs values the check refuses
            low, high = -layout.offset, 2 * wide.offset - layout.offset  # the slot's whole range
            ints = np.clip(np.rint(values / step), low, high).astype(np.int64)
            self.half.set_plaintexts(wide.pack(ints + layout.offset - wide.offset),
                                     _stats(values))
        else:
            self.half.set_update(values)

    def handle(self, raw: bytes) -> bytes:
        return self.half.handle(raw)

    def noise_spent(self):
        return self.half.noise_spent()  # its distributed-DP share is spent like anyone's

    def export_state(self) -> bytes:
        return self.half.export_state()

    @classmethod
    def restore(cls, blob: bytes, backend: AggregationBackend) -> ClientHalf:
        raise ProtocolError("restore the honest half, then wrap it (MaliciousProcedure.half)")

    def report(self) -> dict:
        return self.half.report()


def _stats(values: np.ndarray) -> EncodingStats:
    """What the attacker reports about its 'encoding': nothing clipped (it is the point)."""
    return EncodingStats(values=int(values.size), clipped=0, rms_error=0.0, max_error=0.0)
