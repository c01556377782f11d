"""Evaluate the global model before round 1 and after every round, on the held-out examples (and, when the
clients hold out a validation split for tuning, on that too)."""
from __future__ import annotations

from privfed.evaluation import evaluate
from privfed.federation.setup import Federation
from privfed.server.events import Callback, RoundRecord, RunStarted, RunState


class GlobalEvaluation(Callback):
    """Loads the global state into the runtime's model (in process: the same one model) and scores it."""

    def __init__(self, federation: Federation):
        self.fed = federation

    def _evaluate(self, state: RunState) -> dict:
        self.fed.runtime.load(state.global_vector)
        return evaluate(self.fed.runtime.model, self.fed.test_data, self.fed.task,
                        explicit=self.fed.runtime.explicit, owners=self.fed.test_owners)

    def on_run_start(self, event: RunStarted) -> None:
        if not event.resumed:
            event.state.initial = self._evaluate(event.state)

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        record.evaluation = self._evaluate(state)
        if self.fed.validation_data is not None:  # the tuner's split: scored on the model just evaluated
            scores = evaluate(self.fed.runtime.model, self.fed.validation_data, self.fed.task,
                              explicit=self.fed.runtime.explicit)
            record.evaluation.update({"val_" + k.removeprefix("eval_"): v for k, v in scores.items()})
