"""Evaluate the global model before round 1 and after every round, on the held-out examples (and, when the
clients hold out a validation split for tuning, on that too) — unless evaluation.where is clients only."""
from __future__ import annotations

from privfed.config import EvaluationSite
from privfed.evaluation import evaluate
from privfed.federation.setup import Federation
from privfed.server.events import Callback, RoundRecord, RunStarted, RunState


class GlobalEvaluation(Callback):
    """Loads the global state into the runtime's model (in process: the same one model) and scores it."""

    def __init__(self, federation: Federation, pooled_validation: bool = True):
        self.fed = federation
        # the tuner's validation split scored centrally: in process only (a network engine's server never holds
        # the clients' records; over Flower the split serves federated evaluation)
        self.pooled_validation = pooled_validation and federation.validation_data is not None

    def _evaluate(self, state: RunState) -> dict:
        self.fed.runtime.load(state.global_vector)
        return evaluate(self.fed.runtime.model, self.fed.test_data, self.fed.task,
                        explicit=self.fed.runtime.explicit, owners=self.fed.test_owners)

    def on_run_start(self, event: RunStarted) -> None:
        if not event.resumed and self.on_server:
            event.state.initial = self._evaluate(event.state)

    @property
    def on_server(self) -> bool:
        """evaluation.where server or both: the server scores the model on the config's held-out data."""
        return self.fed.config.evaluation.where is not EvaluationSite.CLIENTS

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        if self.on_server:
            record.evaluation = {**self._evaluate(state), **record.evaluation}  # the clients' totals, if any, kept
        else:
            self.fed.runtime.load(state.global_vector)
        if self.pooled_validation:  # the tuner's split: scored on the model just evaluated
            scores = evaluate(self.fed.runtime.model, self.fed.validation_data, self.fed.task,
                              explicit=self.fed.runtime.explicit)
            record.evaluation.update({"val_" + k.removeprefix("eval_"): v for k, v in scores.items()})
