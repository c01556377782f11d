"""Write the run directory's checkpoint, ledger and metrics after every round, so a killed run resumes."""
from __future__ import annotations

from privfed.results import RunDirectory
from privfed.server.events import Callback, RoundRecord, RunState


class Checkpointer(Callback):
    def __init__(self, run_dir: RunDirectory):
        self.run_dir = run_dir

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        self.run_dir.save_checkpoint(state)
