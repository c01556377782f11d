"""Adaptive clipping, the server's side (Andrew et al., NeurIPS 2021): the clip norm follows a quantile of the
clients' update norms instead of being guessed.

Each client of a round clipped its update to the round's norm S and added one bit, [norm <= S], to the secure sum,
noised by the same Skellam shares as the update (see :mod:`privfed.privacy.distributed`, which accounts for it).
After a round whose sum completed, the server reads the noised count and moves S geometrically,
``S <- S * exp(-rate * (count / contributors - quantile))``: too many clients under S shrinks it, too few grows it.
The new S is post-processing of the private sum; it is sent to the next round's clients in SETUP. It stays within
[one encoding step, ``privacy.max_update_clip``]: below a step clipping has no meaning, and the words' headroom for
the noise (which grows with S) is sized for the ceiling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATE_KEY = "adaptive_update_clip"  # in a checkpoint's strategy state


@dataclass
class AdaptiveClip:
    quantile: float  # the target fraction of clients whose update norm is within S
    learning_rate: float
    lowest: float
    highest: float
    clip: float  # this round's S

    def observe(self, under_clip: float, contributors: int) -> float:
        """After a completed round: the noised count of its ``contributors`` within S -> the next round's S."""
        if contributors < 1:
            return self.clip
        fraction = under_clip / contributors
        moved = self.clip * math.exp(-self.learning_rate * (fraction - self.quantile))
        self.clip = float(min(self.highest, max(self.lowest, moved)))
        return self.clip

    def state_dict(self) -> dict[str, np.ndarray]:
        return {STATE_KEY: np.array([self.clip])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if STATE_KEY in state:
            self.clip = float(state[STATE_KEY][0])
