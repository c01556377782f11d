"""The whole run: one :class:`ExperimentConfig` of sections, each of which checked its own values when it was made;
the rules that tie sections together run here, once all of them exist (:mod:`privfed.config.rules`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from privfed.config.aggregation import AggregationConfig
from privfed.config.attack import AttackConfig
from privfed.config.data import DataConfig
from privfed.config.defence import DefenceConfig
from privfed.config.evaluation import EvaluationConfig
from privfed.config.federation import FederationConfig
from privfed.config.fields import check, described
from privfed.config.flower import FlowerConfig
from privfed.config.model import ModelConfig
from privfed.config.partition import PartitionConfig
from privfed.config.privacy import PrivacyConfig
from privfed.config.rules import check_across_sections
from privfed.config.training import TrainingConfig


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = described("run name", default="experiment")
    seed: int = described("seed for every random choice", default=0)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)

    def __post_init__(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty string without '/'")
        check_across_sections(self)
