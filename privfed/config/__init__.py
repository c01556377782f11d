"""Typed, frozen, validated experiment configuration.

A run is described by one :class:`ExperimentConfig`, built from a YAML file plus ``--set a.b=c`` overrides.
Choices are enums (never free strings), every field has a default and a help text, and every impossible value is
rejected up front with a :class:`~privfed.errors.ConfigError` that names the key and the allowed values.

One module per section (``data``, ``partition``, ``model``, ``privacy``, ``training``, ``federation``,
``aggregation``, ``evaluation``, ``attack``, ``defence``, ``flower``) holds its choices and its dataclass, which
checks its own values when it is made; :mod:`privfed.config.rules` holds the rules across sections and those that
read the built-in catalogs; :mod:`privfed.config.loading` reads and writes YAML, overrides and the built-in configs
(``builtin/*.yaml``). Every public name is importable from here.
"""
from privfed.config.aggregation import PAILLIER_KEY_BITS, Aggregation, AggregationConfig, DropoutStage
from privfed.config.attack import MALICIOUS_CODE, AttackConfig, AttackKind
from privfed.config.data import ClientData, DataConfig, RecordFormat, TextUnit
from privfed.config.defence import AggregationRule, DefenceConfig
from privfed.config.evaluation import EvaluationConfig, EvaluationSite
from privfed.config.experiment import ExperimentConfig
from privfed.config.federation import FederationConfig, Strategy
from privfed.config.flower import FlowerConfig
from privfed.config.loading import (
    BUILTIN_CONFIGS,
    RENAMED_KEYS,
    apply_overrides,
    builtin_config,
    builtin_config_data,
    dump_yaml,
    from_dict,
    help_lines,
    load_config,
    to_dict,
)
from privfed.config.model import LoraBias, ModelConfig, Regime, Task, TaskChoice
from privfed.config.partition import LABEL_SKEW, Partition, PartitionConfig, SizeGrowth
from privfed.config.privacy import Accountant, Clipping, DpMode, PrivacyConfig
from privfed.config.rules import check_defence_sizes, check_positions
from privfed.config.training import ClientOptimizer, TrainingConfig

__all__ = [
    "BUILTIN_CONFIGS", "LABEL_SKEW", "MALICIOUS_CODE", "PAILLIER_KEY_BITS", "RENAMED_KEYS",
    "Accountant", "Aggregation", "AggregationConfig", "AggregationRule", "AttackConfig", "AttackKind", "ClientData",
    "ClientOptimizer", "Clipping", "DataConfig", "DefenceConfig", "DpMode", "DropoutStage", "EvaluationConfig",
    "EvaluationSite", "ExperimentConfig", "FederationConfig", "FlowerConfig", "LoraBias", "ModelConfig", "Partition",
    "PartitionConfig", "PrivacyConfig", "RecordFormat", "Regime", "SizeGrowth", "Strategy", "Task", "TaskChoice",
    "TextUnit", "TrainingConfig",
    "apply_overrides", "builtin_config", "builtin_config_data", "check_defence_sizes", "check_positions",
    "dump_yaml", "from_dict", "help_lines", "load_config", "to_dict",
]
