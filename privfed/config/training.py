"""The ``training:`` section: each client's local DP-SGD steps, batches, optimizer and device."""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from privfed.config.fields import check, described


class ClientOptimizer(enum.Enum):
    """The client's local optimizer (fresh every round: clients keep no optimizer state across rounds)."""

    SGD = "sgd"
    ADAM = "adam"
    ADAM_BC = "adam_bc"  # DP-AdamBC (Tang et al., AAAI 2024): Adam whose second moment has the DP noise's
    # variance taken out; without it, DP-Adam's denominator is the noise and Adam degrades to sign-like DP-SGD


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")



@dataclass(frozen=True)
class TrainingConfig:
    rounds: int = described("federated rounds", default=3)
    local_steps: int = described("DP-SGD steps per client per round", default=3)
    batch_size: int = described("expected (Poisson) batch size", default=64)
    optimizer: ClientOptimizer = described("client optimizer: sgd | adam | adam_bc (DP-AdamBC: Adam with the DP "
                                           "noise's variance taken out of its second moment)",
                                           default=ClientOptimizer.ADAM)
    adam_bc_floor: float = described("adam_bc: the floor under Adam's corrected second moment (Tang et al.'s 5e-8)",
                                     default=5e-8)
    lr: float = described("client learning rate", default=2e-2)
    prox_mu: float = described("FedProx proximal coefficient (0 = off)", default=0.0)
    physical_batch_size: int = described("examples per forward/backward pass (0 = the whole Poisson batch at once); a "
                                         "larger logical batch_size is processed in chunks of this size with the same "
                                         "privacy (Opacus' BatchMemoryManager), so memory stays bounded", default=0)
    device: str = described("where the client runtime trains: auto (CUDA when present) | cpu | cuda | cuda:N",
                            default="auto")

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.rounds >= 1, "training.rounds", "must be >= 1")
        check(self.local_steps >= 1, "training.local_steps", "must be >= 1")
        check(self.batch_size >= 1, "training.batch_size", "must be >= 1")
        check(self.lr > 0, "training.lr", "must be > 0")
        check(self.adam_bc_floor > 0 and math.isfinite(self.adam_bc_floor), "training.adam_bc_floor", "must be > 0")
        check(self.prox_mu >= 0, "training.prox_mu", "must be >= 0")
        check(self.physical_batch_size >= 0, "training.physical_batch_size",
              "must be >= 0 (0 = the whole batch at once)")
        check(DEVICE_PATTERN.fullmatch(self.device) is not None, "training.device",
              f"got {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
