"""Secure sums as a client half and a server half per round, talking only in bytes (see :mod:`.base`).

:func:`make_backend` builds the back-end ``cfg.method`` names; :mod:`.transport` moves a round's messages.
"""
from __future__ import annotations

from privfed.aggregation.base import AggregationBackend, AggregationOutcome, ClientHalf, ServerHalf, Side
from privfed.aggregation.paillier import PaillierBackend
from privfed.aggregation.plain import PlainBackend
from privfed.aggregation.secagg import SecAggBackend
from privfed.aggregation.transport import InProcessTransport, Transport, run_protocol
from privfed.config import Aggregation, AggregationConfig
from privfed.privacy.distributed import DistributedDp

BACKENDS: dict[Aggregation, type[AggregationBackend]] = {
    Aggregation.PLAIN: PlainBackend,
    Aggregation.SECAGG: SecAggBackend,
    Aggregation.PAILLIER: PaillierBackend,
}


def make_backend(cfg: AggregationConfig, *, max_clients: int, vector_length: int, client_ids: list[int],
                 distributed: DistributedDp | None = None, progress: bool = False,
                 side: Side = Side.BOTH) -> AggregationBackend:
    """The back-end ``cfg.method`` names, sized for rounds of up to ``max_clients`` of the federation's clients,
    making the protocol halves of ``side`` (both in process; the server's or one client's on a network engine)."""
    return BACKENDS[cfg.method].for_run(cfg, max_clients=max_clients, vector_length=vector_length,
                                        client_ids=client_ids, distributed=distributed, progress=progress, side=side)


__all__ = ["BACKENDS", "AggregationBackend", "AggregationOutcome", "ClientHalf", "InProcessTransport",
           "ServerHalf", "Side", "Transport", "make_backend", "run_protocol"]
