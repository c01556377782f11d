import math

import pytest

from privfed.config import (
    DpMode,
    ExperimentConfig,
    ModelSource,
    Regime,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from privfed.errors import ConfigError


def test_demo_config_is_valid_and_round_trips():
    cfg = load_config()
    assert cfg.model.source is ModelSource.MINILM and cfg.model.regime is Regime.LORA
    assert cfg.privacy.mode is DpMode.TARGET_EPSILON
    assert from_dict(to_dict(cfg)) == cfg


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(overrides=["privacy.epsilon=3", "model.lora_layers=[4, 5]", "privacy.max_epsilon=inf"])
    assert cfg.privacy.epsilon == 3.0 and cfg.model.lora_layers == (4, 5) and math.isinf(cfg.privacy.max_epsilon)


@pytest.mark.parametrize("override, key, fragment", [
    ("privacy.delta=1.0", "privacy.delta", "(0, 1)"),
    ("privacy.delta=-0.1", "privacy.delta", "(0, 1)"),
    ("privacy.epsilon=-1", "privacy.epsilon", "> 0"),
    ("privacy.mode=strong", "privacy.mode", "off, fixed_noise, target_epsilon"),
    ("model.regime=adapter", "model.regime", "pretrain, full, lora, prompt"),
    ("training.rounds=two", "training.rounds", "integer"),
    ("training.rounds=0", "training.rounds", ">= 1"),
    ("privacy.colour=red", "privacy.colour", "allowed: accountant, clipping, delta"),
    ("federation.client_fraction=1.5", "federation.client_fraction", "(0, 1]"),
    ("model.source=smollm2", "model.source", "causal LMs"),
    ("model.regime=pretrain", "model.regime", "causal LM source"),
])
def test_bad_values_name_the_key_and_allowed_values(override, key, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert err.value.key == key
    assert fragment in str(err.value)


def test_bare_off_in_yaml_means_dp_off():
    assert load_config(overrides=["privacy.mode=off"]).privacy.mode is DpMode.OFF


def test_target_epsilon_must_be_finite():
    with pytest.raises(ConfigError, match="mode off"):
        load_config(overrides=["privacy.epsilon=inf"])


def test_configs_are_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])
