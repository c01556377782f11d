import math
from pathlib import Path

import pytest

from privfed.config import (
    DpMode,
    ExperimentConfig,
    Regime,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from privfed.errors import ConfigError


def test_demo_config_is_valid_and_round_trips():
    cfg = load_config()
    assert cfg.model.source == "minilm" and cfg.model.regime is Regime.LORA
    assert cfg.privacy.mode is DpMode.TARGET_EPSILON
    assert from_dict(to_dict(cfg)) == cfg


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(overrides=["privacy.epsilon=3", "model.lora_top_layers=0", "model.lora_layers=[4, 5]",
                                 "privacy.max_epsilon=inf"])
    assert cfg.privacy.epsilon == 3.0 and cfg.model.lora_layers == (4, 5) and math.isinf(cfg.privacy.max_epsilon)


@pytest.mark.parametrize("override, key, fragment", [
    ("privacy.delta=1.0", "privacy.delta", "(0, 1)"),
    ("privacy.delta=-0.1", "privacy.delta", "(0, 1)"),
    ("privacy.epsilon=-1", "privacy.epsilon", "> 0"),
    ("privacy.mode=strong", "privacy.mode", "off, fixed_noise, target_epsilon"),
    ("model.regime=adapter", "model.regime", "pretrain, full, lora, prompt"),
    ("training.rounds=two", "training.rounds", "integer"),
    ("training.rounds=0", "training.rounds", ">= 1"),
    ("privacy.colour=red", "privacy.colour", "allowed: accountant, clip_count_noise, clip_learning_rate"),
    ("federation.client_fraction=1.5", "federation.client_fraction", "(0, 1]"),
    ("model.task=causal_lm", "model.task", "minilm is a classification model"),
    ("model.regime=pretrain", "model.regime", "pretrain needs a causal LM"),
    ("data.records=chat", "data.records", "bbc_news can be read as text"),
    ("data.source=", "data.source", "got neither"),
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


def test_exponent_numbers_that_yaml_reads_as_strings_are_numbers():
    cfg = load_config(overrides=["privacy.delta=1e-5", "federation.server_tau=1E-9", "privacy.max_epsilon=.inf"])
    assert cfg.privacy.delta == 1e-5 and cfg.federation.server_tau == 1e-9 and math.isinf(cfg.privacy.max_epsilon)
    with pytest.raises(ConfigError, match="privacy.delta: expected a number, got 'tiny'"):
        load_config(overrides=["privacy.delta=tiny"])


@pytest.mark.parametrize("overrides, key", [
    (["privacy.delta=1e-13"], "privacy.delta"),
    (["privacy.epsilon=1000"], "privacy.epsilon"),
    (["privacy.mode=fixed_noise", "privacy.noise_multiplier=0.01"], "privacy.noise_multiplier"),
])
def test_prv_accountant_is_kept_inside_its_working_range(overrides, key):
    with pytest.raises(ConfigError, match="privacy.accountant=rdp") as err:
        load_config(overrides=["privacy.accountant=prv", *overrides])
    assert err.value.key == key
    load_config(overrides=["privacy.accountant=rdp", *overrides])  # RDP has no such limits


def test_unreachable_epsilon_target_is_a_config_error():
    from privfed.config import Accountant
    from privfed.privacy.accounting import calibrate_noise

    with pytest.raises(ConfigError, match=r"target 0.01 is below 0.103, the least the rdp accountant") as err:
        calibrate_noise(0.01, 1e-5, 0.5, 24, Accountant.RDP)  # RDP's floor: no noise, rate or step count helps
    assert err.value.key == "privacy.epsilon" and "privacy.accountant=prv" in str(err.value)
    with pytest.raises(ConfigError, match=r"target 0.001 is too small for 1 DP-SGD steps at sampling rate 1:") as err:
        calibrate_noise(1e-3, 1e-5, 1.0, 1, Accountant.PRV)  # Opacus' "The privacy budget is too low."
    assert err.value.key == "privacy.epsilon" and "training.local_steps" in str(err.value)


@pytest.mark.parametrize("overrides, fragment", [
    (["model.source=tiny_bert", "data.max_length=513"], ("tiny_bert reads at most 512 positions, but "
                                                         "data.max_length=513 needs more; lower it")),
    (["data.max_length=500", "model.regime=prompt", "model.prompt_tokens=16"],
     "data.max_length=500 plus model.prompt_tokens=16 needs more; lower them"),
])
def test_bert_inputs_fit_its_position_embeddings(overrides, fragment):
    from transformers import BertConfig

    from privfed import assets
    from privfed.models.catalog import BERT_POSITIONS

    assert BertConfig.from_pretrained(assets.minilm_dir()).max_position_embeddings == BERT_POSITIONS
    with pytest.raises(ConfigError, match=fragment) as err:
        load_config(overrides=overrides)
    assert err.value.key == "data.max_length"
    load_config(overrides=["model.source=tiny_llama", "data.source=chatterbot", "partition.scheme=iid",
                           "data.max_length=2048"])  # rotary positions: no limit


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("experiments/*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_configs_are_valid(path):
    assert load_config(path).name
