"""Server update rules applied to the mean client update (Reddi et al., "Adaptive Federated Optimization", 2021)."""
from __future__ import annotations

import abc

import numpy as np

from privfed.config import FederationConfig, Strategy


class ServerStrategy(abc.ABC):
    """Turns the aggregated mean update (a pseudo-gradient, negated) into the next global vector."""

    def __init__(self, cfg: FederationConfig):
        self.cfg = cfg

    @abc.abstractmethod
    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray: ...

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


class FedAvg(ServerStrategy):
    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        return global_vector + self.cfg.server_lr * mean_update


class _AdaptiveStrategy(ServerStrategy):
    """Shared first moment; subclasses define the second-moment rule."""

    def __init__(self, cfg: FederationConfig):
        super().__init__(cfg)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    @abc.abstractmethod
    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray: ...

    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        c = self.cfg
        if self.m is None or self.v is None:
            self.m = np.zeros_like(mean_update)
            self.v = np.full_like(mean_update, c.server_tau ** 2)
        self.m = c.server_beta1 * self.m + (1 - c.server_beta1) * mean_update
        self.v = self._second_moment(self.v, mean_update * mean_update)
        return global_vector + c.server_lr * self.m / (np.sqrt(self.v) + c.server_tau)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The moments, once the first update made them (plain arrays: they go into the checkpoint)."""
        return {} if self.m is None or self.v is None else {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict) -> None:
        self.m, self.v = state.get("m"), state.get("v")


class FedAdam(_AdaptiveStrategy):
    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        b2 = self.cfg.server_beta2
        return b2 * v + (1 - b2) * sq


class FedYogi(_AdaptiveStrategy):
    def _second_moment(self, v: np.ndarray, sq: np.ndarray) -> np.ndarray:
        return v - (1 - self.cfg.server_beta2) * sq * np.sign(v - sq)


STRATEGIES: dict[Strategy, type[ServerStrategy]] = {
    Strategy.FEDAVG: FedAvg, Strategy.FEDADAM: FedAdam, Strategy.FEDYOGI: FedYogi}


def make_strategy(cfg: FederationConfig) -> ServerStrategy:
    return STRATEGIES[cfg.strategy](cfg)
