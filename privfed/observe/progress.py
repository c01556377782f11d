"""The progress bar over client rounds and the one-line summary printed after each round."""
from __future__ import annotations

import logging

from tqdm.auto import tqdm

from privfed.results import loss_key, metric_as, quality_key

from privfed.server.events import (
    Callback,
    ClientSkipped,
    ClientTrained,
    RoundRecord,
    RoundStarted,
    RunStarted,
    RunState,
)

log = logging.getLogger(__name__)


def aggregation_note(row: dict) -> str:
    """' [secagg: 5/5 summed, 2 dropped, ...]' for the round line; empty for plain rounds without dropouts."""
    details = row.get("aggregation") or {}
    if "protocol" not in details and not row.get("dropouts"):
        return ""
    parts = [f"{row['clients_aggregated']}/{row['clients_trained']} summed"]
    if row.get("dropouts"):
        parts.append(f"{row['dropouts']} dropped")
    if details.get("dropouts_recovered"):
        parts.append(f"{details['dropouts_recovered']} masks recovered")
    if "word_bits" in details:
        parts.append(f"{details['word_bits']}-bit words")
    if "update_clip" in details:
        clip = f"clip S={details['update_clip']:.3g}"
        if "under_clip" in details:
            clip += f" ({details['under_clip']:.1f} under, noised; next {row['next_update_clip']:.3g})" \
                if "next_update_clip" in row else f" ({details['under_clip']:.1f} under, noised)"
        parts.append(clip)
    if "slots_per_ciphertext" in details:
        parts.append(f"{details['slots_per_ciphertext']} values/ciphertext, "
                     f"{details.get('encrypt_seconds', 0):.1f} s encrypt/client")
    if "protocol" in details:
        parts.append(f"{row['bytes_up_per_client'] / 1e6:.2f} MB up/client")
    return f" [{details.get('protocol', 'plain')}: {', '.join(parts)}]"


class Progress(Callback):
    """A tqdm bar of client rounds (off with ``enabled=False``); round lines and notes go through it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.left_in_round = 0

    def on_run_start(self, event: RunStarted) -> None:
        if event.plan:
            if self.enabled:
                tqdm.write(event.plan)
            else:
                log.info(event.plan)
        self.bar = tqdm(total=event.rounds * event.clients_per_round,
                        initial=event.state.completed_rounds * event.clients_per_round, disable=not self.enabled,
                        desc="client rounds", unit="client", dynamic_ncols=True)

    def on_round_start(self, event: RoundStarted) -> None:
        self.left_in_round = len(event.sampled)

    def on_client_trained(self, event: ClientTrained) -> None:
        self.bar.set_postfix_str(f"round {event.round}, client {event.update.client}")
        self._advance()

    def on_client_skipped(self, event: ClientSkipped) -> None:
        self._advance()

    def _advance(self) -> None:
        self.bar.update(1)
        self.left_in_round -= 1

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        self.bar.update(self.left_in_round)  # sampled clients that dropped out before training
        self.left_in_round = 0
        row = state.rows[-1]
        abort = (row.get("aggregation") or {}).get("abort_reason")
        if abort:
            self.bar.write(f"round {record.round}: aggregation aborted: {abort}")
        metric = quality_key(row)
        clients = metric_as(metric, "fed_")  # evaluation.where both: the clients' totals too
        quality = " ".join(f"{k}={row[k]:.4f}" for k in (metric, loss_key(metric))
                           + ((clients,) if metric.startswith("eval_") else ()) if k in row)
        self.bar.write(f"round {record.round}: {quality or 'not evaluated'} "
                       f"epsilon={row['epsilon']:.3f}"
                       + (f" user_epsilon={row['user_epsilon']:.3f}" if "user_epsilon" in row else "")
                       + aggregation_note(row)
                       + (f" ({record.clients_skipped} skipped)" if record.clients_skipped else ""))

    def on_run_end(self, results: dict) -> None:
        self.close()

    def close(self) -> None:
        """Also called when a run fails, so the terminal is left clean."""
        if self.bar is not None:
            self.bar.close()
