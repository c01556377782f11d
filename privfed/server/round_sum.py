"""A round's secure sum as the driver runs it on every engine: the engine's transport to the participants, the
back-end's server half, the simulated dropouts and the server's view (the round's update sum and its federated
evaluation alike)."""
from __future__ import annotations

from privfed.aggregation.base import AggregationBackend, AggregationOutcome
from privfed.aggregation.transport import Transport
from privfed.federation.server_view import ServerView


def secure_sum(backend: AggregationBackend, round_idx: int, transport: Transport, dropouts: frozenset[int],
               view: ServerView | None) -> AggregationOutcome | None:
    """The sum over an engine's ``transport``, driven from ``backend``'s server half with ``dropouts`` simulated;
    None when no participant took part (none left before the round, or each one's budget refused it)."""
    if not transport.participants:
        return None
    transport.simulate_dropouts(dropouts, backend.cfg.dropout_stage)
    outcome = backend.run(round_idx, transport, view)
    return None if transport.skipped >= set(transport.participants) else outcome
