"""The ``federation:`` section: how many clients a round samples and the server's update rule."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from privfed.config.fields import check, described


class Strategy(enum.Enum):
    """Server-side update rule applied to the (securely) aggregated mean update."""

    FEDAVG = "fedavg"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


@dataclass(frozen=True)
class FederationConfig:
    client_fraction: float = described("share of clients sampled each round", default=1.0)
    strategy: Strategy = described("fedavg | fedadam | fedyogi", default=Strategy.FEDAVG)
    server_lr: float = described("server learning rate (fedavg: 1.0 applies the mean update)", default=1.0)
    server_beta1: float = described("FedAdam/FedYogi first-moment decay", default=0.9)
    server_beta2: float = described("FedAdam/FedYogi second-moment decay", default=0.99)
    server_tau: float = described("FedAdam/FedYogi adaptivity (epsilon)", default=1e-3)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(0.0 < self.client_fraction <= 1.0, "federation.client_fraction", "must be in (0, 1]")
        check(self.server_lr > 0, "federation.server_lr", "must be > 0")
        check(0.0 <= self.server_beta1 < 1.0, "federation.server_beta1", "must be in [0, 1)")
        check(0.0 <= self.server_beta2 < 1.0, "federation.server_beta2", "must be in [0, 1)")
        check(self.server_tau > 0, "federation.server_tau", "must be > 0")
