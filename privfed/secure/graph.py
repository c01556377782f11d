"""Who masks with whom: the complete graph of classic SecAgg or the sparse random Harary graph of SecAgg+.

SecAgg+ (Bell et al., CCS 2020) connects each client to k = O(log n) others instead of all n - 1, which turns the
per-client cost from O(n) to O(log n) key agreements and masks, and the server's recovery from O(n^2) to
O(n log n), while keeping the sum private unless the graph is disconnected by corrupt/dropped clients (k must grow
like log n for that to be unlikely). The graph is a Harary graph over a random ordering of the participants: each
client's neighbours are the k/2 before and after it on the shuffled ring. The shuffle is public randomness derived
from the session id, so every party computes the same graph without another message.
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np


def neighbour_graph(participants: list[int] | tuple[int, ...], degree: int,
                    session: bytes) -> dict[int, tuple[int, ...]]:
    """Map each participant to its sorted neighbours. ``degree`` 0 (or >= n - 1) gives the complete graph."""
    return dict(_graph(tuple(sorted(participants)), degree, session))


@functools.lru_cache(maxsize=4)  # every party of a simulated round asks for the same graph
def _graph(ids: tuple[int, ...], degree: int, session: bytes) -> tuple[tuple[int, tuple[int, ...]], ...]:
    n = len(ids)
    if effective_degree(n, degree) == 0:
        return tuple((c, tuple(x for x in ids if x != c)) for c in ids)
    if degree % 2:
        raise ValueError(f"a Harary graph needs an even degree, got {degree}")
    seed = int.from_bytes(hashlib.sha256(b"privfed-secagg-graph|" + session).digest()[:8], "big")
    ring = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    half = degree // 2
    graph = []
    for pos, client in enumerate(ring):
        around = {ring[(pos + off) % n] for off in range(-half, half + 1) if off}
        graph.append((client, tuple(sorted(around))))
    return tuple(graph)


def effective_degree(num_clients: int, degree: int) -> int:
    """The ring degree a round really uses: 0 (the complete graph) when ``degree`` would reach everyone anyway."""
    return degree if 0 < degree < num_clients - 1 else 0


def round_threshold(num_clients: int, degree: int, fraction: float) -> int:
    """t for a round of ``num_clients`` on a graph of ``degree``: every neighbourhood has the same size."""
    ring = effective_degree(num_clients, degree)
    return threshold_for(num_clients if ring == 0 else ring + 1, fraction)


def suggested_degree(num_clients: int) -> int:
    """An even k ~ 2 log2 n: Bell et al.'s O(log n) with a margin for dropouts."""
    return min(num_clients - 1, 2 * math.ceil(math.log2(max(num_clients, 2))))


def share_holders(client: int, graph: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    """Who holds shares of ``client``'s secrets: its neighbours and itself, sorted; share index = position + 1."""
    return tuple(sorted((*graph[client], client)))


def threshold_for(holders: int, fraction: float) -> int:
    """Shares needed to recover a secret held by ``holders`` parties: ceil(fraction * holders), at least 2."""
    return min(holders, max(2, math.ceil(fraction * holders - 1e-9)))
