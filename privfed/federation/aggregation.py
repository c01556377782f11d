"""Summing client vectors, revealing only the sum: the interface every aggregation back-end implements.

The round loop calls ``aggregate`` with each trained client's plaintext contribution and gets back only the sum
(or ``None`` when the round must abort). A back-end runs both sides: the client-side protection (nothing for
``plain``; encoding, noise shares and masking for SecAgg) and the server-side combination, so the loop never
branches on which one is in use and never touches an individual protected vector.
"""
from __future__ import annotations

import abc
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.federation.server_view import ServerView
from privfed.privacy.distributed import SkellamShare
from privfed.secure.encoding import EncodingStats, FixedPointEncoding, UniformSource, os_uniform, summarise
from privfed.secure.graph import effective_degree, round_threshold
from privfed.secure.messages import SESSION_BYTES, MessageType, ProtocolError, decode
from privfed.secure.primitives import word_dtype
from privfed.secure.secagg import RoundAborted, RoundParameters, SecAggClient, SecAggServer
from privfed.secure.simulate import run_round


@dataclass(frozen=True)
class AggregationOutcome:
    total: np.ndarray | None  # None: the round aborted and the global model must stay as it is
    contributors: tuple[int, ...]
    bytes_up_per_client: int  # mean over the round's trained clients (one that never uploaded counts 0)
    bytes_down_per_client: int  # protocol messages only (the model broadcast is counted by the round loop)
    seconds: float
    details: dict = field(default_factory=dict)
    noise: SkellamShare | None = None  # the distributed-DP share each contributor added, if any

    @classmethod
    def aborted(cls, reason: str, started: float, details: dict | None = None) -> AggregationOutcome:
        """A round that released nothing: the global model stays as it is, ``details["abort_reason"]`` says why."""
        return cls(None, (), 0, 0, time.perf_counter() - started, {**(details or {}), "abort_reason": reason})


class Aggregator(abc.ABC):
    """A secure-sum back-end for rounds of up to ``max_clients`` vectors of ``vector_length`` values; usable as a
    context manager, which closes it. Subclasses implement :meth:`_sum`; :meth:`aggregate` checks its inputs first.
    """

    max_clients: int
    vector_length: int

    def __enter__(self) -> Aggregator:  # noqa: PYI034 (typing.Self needs Python 3.11; privfed supports 3.10)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def prepare_round(self, round_idx: int, client_ids: list[int]) -> None:
        """Called before the round's clients train: a back-end may start client-side work that needs no update."""

    def plan(self) -> str:
        """A line on what aggregation will cost per round, printed before the run starts ("" when negligible)."""
        return ""

    def close(self) -> None:
        """Release what the back-end holds (worker processes); called once the run ends, even after an error."""

    def aggregate(self, round_idx: int, contributions: Mapping[int, np.ndarray],
                  dropouts: frozenset[int] = frozenset(), view: ServerView | None = None) -> AggregationOutcome:
        """Sum ``contributions`` (client id -> float vector), revealing only the sum to the server.

        ``dropouts``: clients that vanish during the round, at the configured stage. ``view``, if given, records
        every message the server receives and each client's upload as the server could read it. Refused before
        any vector is touched (ValueError): no inputs, more clients than the back-end was sized for (their sum
        could overflow the encoding), vectors of another length, a view already holding another round.
        """
        if not contributions:
            raise ValueError("no contributions to sum")
        if len(contributions) > self.max_clients:
            raise ValueError(f"{len(contributions)} clients in a round, but the back-end was sized for at most "
                             f"{self.max_clients}: their sum could overflow the encoding")
        wrong = {c: np.shape(v) for c, v in contributions.items() if np.shape(v) != (self.vector_length,)}
        if wrong:
            raise ValueError(f"every vector must have shape ({self.vector_length},); got {wrong}")
        if view is not None and view.messages:
            raise ValueError("this ServerView already holds a round; pass a fresh ServerView() to each round")
        return self._sum(round_idx, contributions, dropouts, view)

    @abc.abstractmethod
    def _sum(self, round_idx: int, contributions: Mapping[int, np.ndarray], dropouts: frozenset[int],
             view: ServerView | None) -> AggregationOutcome:
        """The back-end's protocol, on inputs :meth:`aggregate` has checked."""


class PlainAggregator(Aggregator):
    """No protection: the server receives each float32 vector and adds them (float64 accumulator)."""

    def __init__(self, cfg: AggregationConfig, max_clients: int, vector_length: int):
        self.cfg, self.max_clients, self.vector_length = cfg, max_clients, vector_length

    def _sum(self, round_idx: int, contributions: Mapping[int, np.ndarray], dropouts: frozenset[int],
             view: ServerView | None) -> AggregationOutcome:
        start = time.perf_counter()
        arrived = {c: v for c, v in contributions.items()
                   if c not in dropouts or self.cfg.dropout_stage is DropoutStage.UNMASKING}
        size = self.vector_length * np.dtype(np.float32).itemsize
        if not arrived:
            return AggregationOutcome.aborted("every client dropped before uploading", start)
        total = np.zeros(self.vector_length, dtype=np.float64)
        for cid, vector in arrived.items():
            sent = vector.astype(np.float32)  # what travels is float32
            if view is not None:
                view.record(cid, "PLAIN_UPDATE", size, sent)
            total += sent
        return AggregationOutcome(total=total, contributors=tuple(sorted(arrived)), bytes_up_per_client=size,
                                  bytes_down_per_client=0, seconds=time.perf_counter() - start,
                                  details={"dropouts": len(contributions) - len(arrived)})


class SecAggAggregator(Aggregator):
    """SecAgg / SecAgg+: encode, (add Skellam noise shares,) mask, route as bytes, unmask the sum, decode.

    The server object only ever receives masked bytes and keeps their running sum. The encoding's word size is
    fixed here, before any round, for the largest round (``max_clients``): a configuration whose sum could wrap
    around is a ConfigError now, not a wrong model later.
    """

    def __init__(self, cfg: AggregationConfig, max_clients: int, vector_length: int,
                 distributed_noise: float = 0.0, update_clip: float = 0.0, uniform: UniformSource = os_uniform):
        self.cfg = cfg
        self.uniform = uniform
        self.distributed_noise, self.update_clip = distributed_noise, update_clip
        self.vector_length, self.max_clients = vector_length, max_clients
        self.encoding = FixedPointEncoding.for_clients(cfg.clip_range, cfg.value_bits, max_clients)
        share = self._noise_share(self.encoding.step, max_clients)
        if share is not None:  # the noise needs headroom too (and must be sampleable)
            share.check_sampleable()
            self.encoding = FixedPointEncoding.for_clients(cfg.clip_range, cfg.value_bits, max_clients,
                                                           extra_bound=share.tail_bound())
        self.identities: dict[int, Ed25519PrivateKey] = {}

    def _noise_share(self, step: float, num_clients: int) -> SkellamShare | None:
        if self.distributed_noise <= 0:
            return None
        return SkellamShare(noise_multiplier=self.distributed_noise, update_clip=self.update_clip, step=step,
                            dimension=self.vector_length - 1,
                            min_clients=round_threshold(num_clients, self.cfg.neighbours, self.cfg.threshold))

    def _directory(self, clients: list[int]) -> dict[int, bytes]:
        """Ed25519 identities, made once per client: the PKI that the consistency check assumes."""
        for c in clients:
            self.identities.setdefault(c, Ed25519PrivateKey.generate())
        return {c: self.identities[c].public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw) for c in clients}

    def _sum(self, round_idx: int, contributions: Mapping[int, np.ndarray], dropouts: frozenset[int],
             view: ServerView | None) -> AggregationOutcome:
        start = time.perf_counter()
        ids = sorted(contributions)
        if len(ids) < 2:  # the "sum" of one client is its update: secure aggregation cannot hide it
            return AggregationOutcome.aborted(f"only {len(ids)} client(s) to sum; secagg needs 2 or more", start)
        session = os.urandom(SESSION_BYTES)
        share = self._noise_share(self.encoding.step, len(ids))
        stats: list[EncodingStats] = []
        clients: dict[int, SecAggClient] = {}
        directory = self._directory(ids) if self.cfg.consistency_check else {}
        encode_seconds = 0.0
        for cid in ids:
            tick = time.perf_counter()
            ints, st = self.encoding.quantise(contributions[cid], self.uniform)
            if share is not None:
                ints[:-1] += share.sample(ints.size - 1)  # the count coordinate stays exact
            stats.append(st)
            words = self.encoding.to_words(ints)
            encode_seconds += time.perf_counter() - tick
            clients[cid] = SecAggClient(cid, words, session, round_idx, self.identities.get(cid), directory)
        degree = effective_degree(len(ids), self.cfg.neighbours)
        params = RoundParameters(session, round_idx, tuple(ids), degree,
                                 round_threshold(len(ids), self.cfg.neighbours, self.cfg.threshold),
                                 self.encoding.word_bits, self.vector_length, self.cfg.consistency_check)
        server = SecAggServer(params)
        details = {
            "protocol": "secagg+" if degree else "secagg", "clients": len(ids), "neighbours": degree or len(ids) - 1,
            "threshold": params.threshold, "word_bits": self.encoding.word_bits,
            "value_bits": self.encoding.value_bits, "clip_range": self.encoding.clip_range,
            "step": self.encoding.step, "consistency_check": self.cfg.consistency_check,
            **summarise(stats),
            "encode_seconds": encode_seconds,
        }
        dropping = {c: self.cfg.dropout_stage for c in dropouts if c in clients}
        total, contributors, abort_reason, recovered = None, (), None, ()
        try:
            outcome, log = run_round(server, clients, dropping, None if view is None else _recorder(view, server))
            total = self.encoding.decode_sum(outcome.total)
            contributors, recovered = outcome.contributors, outcome.recovered_dropouts
            left = log.dropped
        except (RoundAborted, ProtocolError) as err:
            abort_reason = str(err)
            left = {c: "dropped" for c in dropping}
        n = len(ids)
        details.update({
            "dropouts": len(left), "dropped_stage": self.cfg.dropout_stage.value if dropping else None,
            "dropouts_recovered": len(recovered), "left": {str(c): why for c, why in left.items()},
            "client_crypto_seconds": float(np.mean([c.timer.seconds for c in clients.values()])),
            "server_crypto_seconds": server.timer.seconds,
            "bytes_up_max": max(c.bytes_sent for c in clients.values()),
            "abort_reason": abort_reason,
        })
        return AggregationOutcome(
            total=total, contributors=contributors,
            bytes_up_per_client=sum(c.bytes_sent for c in clients.values()) // n,
            bytes_down_per_client=sum(c.bytes_received for c in clients.values()) // n,
            seconds=time.perf_counter() - start, details=details, noise=share)


def _recorder(view: ServerView, server: SecAggServer):
    """A transport tap that files each client message in ``view``, with the masked vector of MASKED_INPUT."""
    params = server.params

    def tap(sender: int, raw: bytes) -> None:
        try:
            message = decode(raw, max_bytes=server.max_bytes, session=params.session, round_idx=params.round)
        except ProtocolError:
            view.record(sender, "MALFORMED", len(raw))
            return
        upload = None
        if message.type is MessageType.MASKED_INPUT:
            upload = np.frombuffer(message.body["vector"], dtype=word_dtype(params.word_bits)).copy()
        view.record(sender, message.type.name, len(raw), upload)

    return tap


def make_aggregator(cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                    distributed_noise: float = 0.0, update_clip: float = 0.0, progress: bool = False) -> Aggregator:
    """The back-end ``cfg.method`` names, sized for rounds of up to ``max_clients`` of the federation's clients."""
    if cfg.method is Aggregation.PAILLIER:
        from privfed.federation.paillier_aggregator import PaillierAggregator

        return PaillierAggregator(cfg, max_clients, vector_length, client_ids, progress)
    if cfg.method is Aggregation.SECAGG:
        return SecAggAggregator(cfg, max_clients, vector_length, distributed_noise, update_clip)
    return PlainAggregator(cfg, max_clients, vector_length)

