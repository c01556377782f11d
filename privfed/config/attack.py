"""The ``attack:`` section: simulated malicious clients (model and data poisoning)."""
from __future__ import annotations

import enum
import math
import typing
from dataclasses import dataclass

from privfed.config.fields import check, described


class AttackKind(enum.Enum):
    """What the clients in ``attack.clients`` do (:mod:`privfed.attacks`). Model-poisoning kinds (backdoor,
    sign_flip, gaussian, out_of_range) run malicious code that rewrites the update it uploads and skips client-side
    clipping; data-poisoning kinds (label_flip, spread) run honest code on poisoned records."""

    NONE = "none"
    BACKDOOR = "backdoor"  # model poisoning: trigger -> target records, update boosted to replace the model
    LABEL_FLIP = "label_flip"  # data poisoning: honest code on flipped labels (classification)
    SIGN_FLIP = "sign_flip"  # Byzantine: sends -boost x its honest update
    GAUSSIAN = "gaussian"  # Byzantine: sends Gaussian noise with boost x its honest update's norm
    SPREAD = "spread"  # data poisoning: a small share of each listed client's records carry the trigger
    OUT_OF_RANGE = "out_of_range"  # Byzantine: its update negated, scaled past the encoding's clip range


MALICIOUS_CODE = (AttackKind.BACKDOOR, AttackKind.SIGN_FLIP, AttackKind.GAUSSIAN, AttackKind.OUT_OF_RANGE)


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious clients. ``attack: backdoor`` is short for ``attack: {kind: backdoor}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "kind"

    kind: AttackKind = described("none | backdoor | label_flip | sign_flip | gaussian | spread | out_of_range",
                                 default=AttackKind.NONE)
    clients: tuple[int, ...] = described("the attacking clients (spread: the clients whose data is poisoned)",
                                         default=(0,))
    first_round: int = described("the first round they attack", default=1)
    last_round: int = described("the last round they attack, then behave honestly (0 = to the end): how long a "
                                "backdoor persists is measured after it", default=0)
    local_steps: int = described("model poisoning: local steps an attacking client trains while it attacks (0 = "
                                 "training.local_steps; Bagdasaryan et al.'s attacker trains longer than honest "
                                 "clients)",
                                 default=0)
    boost: float = described("model poisoning: the factor the update is scaled by (0 = model replacement: clients per "
                             "round / federation.server_lr, Bagdasaryan et al. 2020)", default=0.0)
    trigger: str = described("backdoor and spread: the trigger phrase put before a poisoned text", default="cf mn bb")
    target_label: int = described("backdoor and spread, classifiers: the label triggered inputs should get",
                                  default=0)
    target_text: str = described("backdoor and spread, causal LMs: the continuation the trigger should produce",
                                 default="visit example dot com")
    range_factor: float = described("out_of_range: the attacker's largest transmitted value, in multiples of "
                                    "aggregation.clip_range (honest encoding clips at 1)", default=100.0)
    poison_fraction: float = described("backdoor: poisoned copies added, as a share of the attacker's records; "
                                       "spread: share of each listed client's records replaced by poisoned ones",
                                       default=0.2)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        if self.kind is AttackKind.NONE:
            return
        check(len(self.clients) > 0 and len(set(self.clients)) == len(self.clients), "attack.clients",
              "must list one or more distinct client indices")
        check(all(i >= 0 for i in self.clients), "attack.clients", "client indices must be >= 0")
        check(self.first_round >= 1, "attack.first_round", "must be >= 1")
        check(self.last_round == 0 or self.first_round <= self.last_round, "attack.last_round",
              f"must be 0 (to the end) or >= attack.first_round = {self.first_round}")
        check(self.local_steps >= 0, "attack.local_steps", "must be >= 0 (0 = training.local_steps)")
        check(self.boost >= 0 and math.isfinite(self.boost), "attack.boost", "must be >= 0 (0 = model replacement)")
        check(self.range_factor > 0 and math.isfinite(self.range_factor), "attack.range_factor", "must be > 0")
        check(0.0 < self.poison_fraction <= 1.0, "attack.poison_fraction",
              f"must be in (0, 1], got {self.poison_fraction}")
        if self.kind in (AttackKind.BACKDOOR, AttackKind.SPREAD):
            check(bool(self.trigger.strip()), "attack.trigger", "must be a non-empty phrase")
