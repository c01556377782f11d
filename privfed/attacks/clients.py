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

from privfed.aggregation.base import AggregationBackend, AggregationOutcome, ClientHalf, ServerHalf
from privfed.aggregation.paillier import PaillierClientHalf
from privfed.aggregation.secagg import SecAggClientHalf
from privfed.client.state import ClientState, ClientUpdate
from privfed.config import MALICIOUS_CODE, AttackKind, ExperimentConfig
from privfed.federation.vectors import derive_seed
from privfed.secure.encoding import EncodingStats
from privfed.secure.messages import ProtocolError
from privfed.server.driver import contribution


class MaliciousClients:
    """The attack section as the clients' side applies it each round."""

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

    def contribution(self, update: ClientUpdate, round_idx: int, weight_cap: int) -> np.ndarray:
        """What an attacking client uploads (see the module docstring)."""
        kind, delta = self.attack.kind, update.delta
        if kind in (AttackKind.LABEL_FLIP, AttackKind.SPREAD):
            return contribution(self.cfg, delta, update.num_examples, weight_cap)  # honest code
        if kind is AttackKind.BACKDOOR:
            sent = self.boost * delta
        elif kind is AttackKind.GAUSSIAN:
            rng = np.random.default_rng(derive_seed(self.cfg.seed, round_idx, update.client, 0x6A55))
            scale = self.boost * float(np.linalg.norm(delta)) / np.sqrt(max(delta.size, 1))
            sent = rng.normal(0.0, scale, delta.size)
        elif kind is AttackKind.OUT_OF_RANGE:  # largest transmitted value: range_factor x the clip range
            weight = min(1.0, update.num_examples / weight_cap)
            peak = float(np.max(np.abs(delta))) * weight
            scale = self.attack.range_factor * self.cfg.aggregation.clip_range / peak if peak > 0 else 0.0
            sent = -scale * delta
        else:
            sent = -self.boost * delta
        weight = min(1.0, update.num_examples / weight_cap)  # at most the largest honest weight: boosting does the rest
        return np.append(np.asarray(sent, dtype=np.float64) * weight, weight)

    def wrap(self, backend: AggregationBackend, round_idx: int) -> AggregationBackend:
        """The back-end as this round's clients run it: out_of_range attackers get halves that bypass encoding."""
        if self.attack.kind is not AttackKind.OUT_OF_RANGE:
            return backend
        attackers = frozenset(c for c in self.attack.clients if self.attacking(c, round_idx))
        return BypassingBackend(backend, attackers) if attackers else backend

    def wrap_half(self, half: ClientHalf, round_idx: int) -> ClientHalf:
        """A node's own client half as it runs this round: bypassing the encoding when it is an out_of_range
        attacker (a node restores its half from bytes for every message, then wraps it again)."""
        if self.attack.kind is AttackKind.OUT_OF_RANGE and self.attacking(half.client_id, round_idx):
            return OutOfRangeHalf(half)
        return half


class BypassingBackend(AggregationBackend):
    """``inner`` with the client halves of ``attackers`` replaced by :class:`OutOfRangeHalf`; the server half and
    every honest half are ``inner``'s own."""

    def __init__(self, inner: AggregationBackend, attackers: frozenset[int]):
        self.inner, self.attackers = inner, attackers
        self.cfg, self.max_clients, self.vector_length = inner.cfg, inner.max_clients, inner.vector_length
        self.client_type = inner.client_type

    @classmethod
    def for_run(cls, *args, **kwargs) -> AggregationBackend:
        raise TypeError("BypassingBackend wraps a back-end for one round; build the back-end with make_backend")

    def server_half(self, round_idx: int, participants: list[int]) -> ServerHalf:
        return self.inner.server_half(round_idx, participants)

    def client_half(self, round_idx: int, client_id: int) -> ClientHalf:
        half = self.inner.client_half(round_idx, client_id)
        return OutOfRangeHalf(half) if client_id in self.attackers else half

    def complete(self, outcome: AggregationOutcome, reports: list[dict]) -> AggregationOutcome:
        return self.inner.complete(outcome, reports)


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
        raise ProtocolError("restore the honest half, then wrap it (MaliciousClients.wrap_half)")

    def report(self) -> dict:
        return self.half.report()


def _stats(values: np.ndarray) -> EncodingStats:
    """What the attacker reports about its 'encoding': nothing clipped (it is the point)."""
    return EncodingStats(values=int(values.size), clipped=0, rms_error=0.0, max_error=0.0)
