"""The attack's metrics, as a round callback: attack success rate on the triggered held-out set after every
round, which of the server's inputs held an attacker and how much of each the defence kept, and how long a
backdoor persists once the attacker stops."""
from __future__ import annotations

import math

import numpy as np

from privfed.attacks.clients import MaliciousClients
from privfed.attacks.data import TriggeredSet, target_rate
from privfed.config import AttackKind, ExperimentConfig
from privfed.federation.setup import Federation
from privfed.server.events import Callback, RoundCombined, RoundRecord, RunStarted, RunState

ASR = "attack_success_rate"
CLEAN_TARGET = "target_rate_clean"  # the same inputs without the trigger: how often the target comes anyway


class AttackObserver(Callback):
    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.fed: Federation | None = None
        self.triggered: TriggeredSet | None = None
        self.malicious: MaliciousClients | None = None
        self.survival: dict[int, float] = {}  # round -> mean share kept of the inputs holding an attacker
        self.rejected: dict[int, int] = {}  # round -> attacker-holding inputs the range check rejected
        self.attacker_inputs: dict[int, int] = {}  # round -> inputs holding an attacker
        self.honest_survival: dict[int, float] = {}  # round -> mean share kept of the other inputs (the yardstick)

    def watch(self, fed: Federation, triggered: TriggeredSet | None, malicious: MaliciousClients) -> None:
        self.fed, self.triggered, self.malicious = fed, triggered, malicious

    def _rates(self, vector: np.ndarray) -> dict[str, float]:
        """The success rate on triggered inputs, and the target rate on the same inputs without the trigger."""
        fed, triggered = self.fed, self.triggered
        assert fed is not None and triggered is not None
        fed.runtime.load(vector)
        return {key: target_rate(fed.runtime.model, data, triggered.task, fed.runtime.explicit)
                for key, data in ((ASR, triggered.data), (CLEAN_TARGET, triggered.clean))}

    def on_run_start(self, event: RunStarted) -> None:
        if self.triggered is not None and not event.resumed:
            event.state.initial.update(self._rates(event.state.global_vector))

    def on_combined(self, event: RoundCombined) -> None:
        assert self.malicious is not None
        c = event.combination
        active = {a for a in self.cfg.attack.clients if self.malicious.attacking(a, event.round)}
        holding = [i for i, members in enumerate(c.inputs) if active & set(members)]
        if not holding:
            return
        others = [i for i in range(len(c.inputs)) if i not in holding]
        self.attacker_inputs[event.round] = len(holding)
        self.survival[event.round] = float(np.mean([c.kept[i] for i in holding]))
        if others:
            self.honest_survival[event.round] = float(np.mean([c.kept[i] for i in others]))
        self.rejected[event.round] = sum(bool(c.rejected[i]) for i in holding)

    def on_round_end(self, record: RoundRecord, state: RunState) -> None:
        if self.triggered is not None:
            record.evaluation.update(self._rates(state.global_vector))

    def summary(self, results: dict) -> dict:
        """The run's attack metrics, for results.json's ``attack``."""
        a = self.cfg.attack
        rows = results["rounds"]
        asr = [float(r[ASR]) for r in rows if ASR in r]
        out: dict = {"kind": a.kind.value, "clients": list(a.clients), "first_round": a.first_round,
                     "last_round": a.last_round or self.cfg.training.rounds,
                     "boost": self.malicious.boost if self.malicious else math.nan,
                     "survival_rate": float(np.mean(list(self.survival.values()))) if self.survival else math.nan,
                     "honest_survival_rate": float(np.mean(list(self.honest_survival.values())))
                     if self.honest_survival else math.nan,
                     "attacker_inputs_rejected": int(sum(self.rejected.values())),
                     "attacker_inputs": int(sum(self.attacker_inputs.values()))}
        if asr:
            effect = [float(r[ASR]) - float(r[CLEAN_TARGET]) for r in rows if ASR in r]
            last = min(a.last_round or len(asr), len(asr))
            out.update({ASR: asr[-1], CLEAN_TARGET: float(rows[-1][CLEAN_TARGET]),
                        "asr_last_attack": asr[last - 1], "target_rate_clean_last_attack": float(rows[last - 1][CLEAN_TARGET]),
                        "asr_initial": results.get("initial", {}).get(ASR, math.nan),
                        "asr_peak": max(asr), "asr_by_round": asr, "backdoor_effect_by_round": effect,
                        **self._persistence(effect)})
        return out

    def _persistence(self, effect: list[float]) -> dict:
        """Rounds after the attacker's last round during which the backdoor's effect (success rate minus the
        target rate on the same inputs without the trigger) stays at half its value then or more; None when the
        attacker never stopped or the backdoor had no effect then (under 0.05)."""
        last = self.cfg.attack.last_round
        if last == 0 or last >= len(effect) or self.cfg.attack.kind not in (AttackKind.BACKDOOR, AttackKind.SPREAD):
            return {"persistence_rounds": None, "persists_to_end": None}
        at_stop = effect[last - 1]
        if at_stop < 0.05:
            return {"persistence_rounds": None, "persists_to_end": None, "effect_at_stop": at_stop}
        after = effect[last:]
        rounds = next((i for i, value in enumerate(after) if value < at_stop / 2), len(after))
        return {"persistence_rounds": rounds, "persists_to_end": rounds == len(after), "effect_at_stop": at_stop}
