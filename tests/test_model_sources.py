"""model.source beyond the built-ins: local Hugging Face folders and cached models, each refused problem, and the
LoRA / prompt options reaching peft. Folders are written here by save_pretrained from tiny random models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import AutoTokenizer, BertModel, LlamaForCausalLM

import privfed
from privfed import assets
from privfed.config import Accountant, LoraBias, ModelConfig, Regime, Task
from privfed.errors import ConfigError
from privfed.models.catalog import BUILTIN_MODELS
from privfed.models.checks import check_before_training, unsupported_modules
from privfed.models.regimes import apply_regime, trainable_parameters
from privfed.models.sources import BUILTIN_BUILDERS, load_model, tiny_bert_config, tiny_llama_config
from privfed.privacy.dpsgd import DpSettings, wrap_for_dp
from privfed.server.events import Callback
from tests.conftest import TINY_CAUSAL, make_config

TINY_RUN = ["data.source=chatterbot", "partition.scheme=iid", "partition.num_clients=2", "data.max_length=24",
            "data.max_examples=60", "data.eval_examples=12", "training.rounds=1", "training.local_steps=1",
            "training.batch_size=8", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0",
            "evaluation.generations=0"]


def _save_llama(folder: Path, tie: bool = False) -> Path:
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    config = tiny_llama_config(len(tok), tok.pad_token_id)
    config.tie_word_embeddings = tie
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _save_bert(folder: Path, max_positions: int = 512) -> Path:
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    config = tiny_bert_config(len(tok), num_labels=2)
    config.max_position_embeddings = max_positions
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)  # an encoder without a head: the classifier head is fresh
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    return _save_llama(tmp_path_factory.mktemp("models") / "my-llama")


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    return _save_bert(tmp_path_factory.mktemp("models") / "my-bert")


class GlobalVectors(Callback):
    """The global trainable vector before round 1 and after each round, and whether clients trained under DP."""

    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.dp_events: list[bool] = []

    def on_run_start(self, event) -> None:
        self.vectors.append(event.state.global_vector.copy())

    def on_client_trained(self, event) -> None:
        self.dp_events.append(event.event is not None)

    def on_round_end(self, record, state) -> None:
        self.vectors.append(state.global_vector.copy())


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, GlobalVectors]:
    seen = GlobalVectors()
    cfg = privfed.load_config(overrides=[*TINY_RUN, *overrides])
    return privfed.run(cfg, tmp_path / "run", progress=False, callbacks=[seen]), seen


@pytest.mark.parametrize("regime", ["pretrain", "full", "lora", "prompt"])
def test_local_llama_folder_trains_in_every_regime(tmp_path, llama_folder, regime):
    res, seen = _run(tmp_path, f"model.source={llama_folder}", f"model.regime={regime}")
    names = res["model"]["trainable_names"]
    expected = {"lora": "lora_", "prompt": "prompt_encoder"}.get(regime)
    assert expected is None or all(expected in n for n in names)
    assert seen.dp_events and all(seen.dp_events)  # DP-SGD trained every client (each noisy step moved every tensor)
    assert not np.array_equal(seen.vectors[0], seen.vectors[-1])


def test_local_bert_classifier_trains_on_bbc_news(tmp_path, bert_folder):
    res, seen = _run(tmp_path, f"model.source={bert_folder}", "data.source=bbc_news", "model.regime=lora")
    names = res["model"]["trainable_names"]
    assert any("classifier" in n for n in names) and any("lora_" in n for n in names)
    assert "eval_accuracy" in res["rounds"][-1]
    assert not np.array_equal(seen.vectors[0], seen.vectors[-1])


def test_cached_model_name_resolves_offline(tmp_path, llama_folder):
    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for f in llama_folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (tmp_path / "hub" / "models--acme--tiny-llama" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-llama" / "refs" / "main").write_text("a" * 40)
    code = ("import json; from privfed.config import ModelConfig, Task; from privfed.models.sources import load_model;"
            "m = load_model(ModelConfig(source='acme/tiny-llama'), Task.CAUSAL_LM, 1, False, 0);"
            "print(json.dumps([type(m.model).__name__, str(m.tokenizer_dir), m.model.training]))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["LlamaForCausalLM", str(snapshot), True]


def _load(source: str, task: Task = Task.CAUSAL_LM, random_init: bool = False, **model):
    return load_model(ModelConfig(source=source, **model), task, num_labels=2, random_init=random_init, seed=0)


def _refused(key: str, fragment: str, call, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        call(*args, **kwargs)
    assert err.value.key == key and fragment in err.value.problem, err.value
    return err.value


def test_unknown_source_says_what_was_looked_for(tmp_path):
    err = _refused("model.source", "not a built-in model", _load, "acme/not-cached")
    assert "minilm" in err.problem and "Hugging Face cache" in err.problem
    (tmp_path / "weights.bin").write_bytes(b"")
    _refused("model.source", "is a file", _load, str(tmp_path / "weights.bin"))


def test_folder_without_config_or_weights(tmp_path, llama_folder):
    _refused("model.source", "no config.json", _load, str(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in llama_folder.iterdir():
        if f.name != "model.safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    _refused("model.source", "no weights", _load, str(bare))
    assert _load(str(bare), random_init=True).model.training  # pretrain builds from the config alone


def test_encoder_cannot_be_a_causal_lm(bert_folder):
    _refused("model.task", "encoder", _load, str(bert_folder))


def test_missing_pad_token_is_eos_or_refused(tmp_path):
    tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)).save_pretrained(tmp_path / "m")
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "m")
    _refused("model.source", "neither a pad nor an eos", _load, str(tmp_path / "m"))
    tok.eos_token = "[SEP]"
    tok.save_pretrained(tmp_path / "m")
    loaded = _load(str(tmp_path / "m"))
    assert loaded.tokenizer.pad_token == "[SEP]"
    assert loaded.model.config.pad_token_id == tok.convert_tokens_to_ids("[SEP]")


def test_max_length_beyond_learned_positions(tmp_path):
    folder = _save_bert(tmp_path / "short", max_positions=40)
    loaded = _load(str(folder), Task.CLASSIFICATION)
    assert loaded.max_positions == 40
    cfg = make_config(TINY_CAUSAL, f"model.source={folder}", "model.task=classification", "model.regime=full",
                      "data.source=bbc_news", "data.max_length=64", "partition.scheme=iid")
    _refused("data.max_length", "reads at most 40 positions", check_before_training, loaded.model, cfg, 40)
    assert _load("tiny_llama").max_positions is None  # rotary positions: no limit


def test_tied_weights_refused_under_ghost_clipping_only(tmp_path):
    folder = _save_llama(tmp_path / "tied-llama", tie=True)
    model = _load(str(folder)).model
    cfg = make_config(TINY_CAUSAL, f"model.source={folder}", "model.regime=full", "privacy.mode=fixed_noise",
                      "privacy.clipping=ghost")
    err = _refused("privacy.clipping", "ties", check_before_training, model, cfg, None)
    assert str(folder) in err.problem
    check_before_training(model, make_config(TINY_CAUSAL, f"model.source={folder}", "privacy.mode=fixed_noise"),
                          None)


def test_module_without_per_sample_gradients_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert unsupported_modules(model) == ["BatchNorm1d"]
    cfg = make_config(TINY_CAUSAL, "privacy.mode=fixed_noise")
    _refused("model.source", "BatchNorm1d", check_before_training, model, cfg, None)
    check_before_training(model, make_config(TINY_CAUSAL), None)  # no DP: nothing to refuse
    assert unsupported_modules(_load("tiny_llama").model) == []  # LLaMA's RMSNorm: Opacus' functorch fallback


def test_lora_targets_must_match_linear_modules(llama_folder):
    cfg = ModelConfig(source=str(llama_folder), regime=Regime.LORA, lora_targets=("q_proj", "attention_query"))
    err = _refused("model.lora_targets", "attention_query match no Linear", apply_regime, _load(str(llama_folder)).model,
                   cfg, Task.CAUSAL_LM, llama_folder)
    assert "q_proj" in err.problem and "o_proj" in err.problem


def test_architecture_without_peft_default_asks_for_targets(llama_folder):
    model = _load(str(llama_folder)).model
    model.config.model_type = "acme_net"
    cfg = ModelConfig(source=str(llama_folder), regime=Regime.LORA)
    _refused("model.lora_targets", "no default LoRA targets for acme_net", apply_regime, model, cfg, Task.CAUSAL_LM,
             llama_folder)
    named = apply_regime(model, ModelConfig(source=str(llama_folder), regime=Regime.LORA,
                                            lora_targets=("o_proj",)), Task.CAUSAL_LM, llama_folder)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in trainable_parameters(named)} == {"o_proj"}


@pytest.mark.parametrize("top, adapted", [(1, {1}), (2, {0, 1}), (4, {0, 1})])
def test_lora_top_layers_adapts_the_top_k_layers_of_any_depth(top, adapted):
    loaded = _load("tiny_llama", Task.CAUSAL_LM)  # 2 layers: the top 4 are all of them
    model = apply_regime(loaded.model, ModelConfig(source="tiny_llama", regime=Regime.LORA, lora_top_layers=top),
                         Task.CAUSAL_LM, loaded.tokenizer_dir)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in trainable_parameters(model) if "lora_" in n}
    assert layers == adapted


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_lora_options_reach_peft_and_biases_get_per_sample_gradients():
    loaded = _load("tiny_bert", Task.CLASSIFICATION)
    cfg = ModelConfig(source="tiny_bert", regime=Regime.LORA, lora_targets=("query", "key"), lora_dropout=0.25,
                      lora_bias=LoraBias.ALL, lora_layers=(1,))
    model = apply_regime(loaded.model, cfg, Task.CLASSIFICATION, loaded.tokenizer_dir)
    peft_cfg = model.peft_config["default"]
    assert (set(peft_cfg.target_modules), peft_cfg.lora_dropout, peft_cfg.bias) == ({"query", "key"}, 0.25, "all")
    names = [n for n, _ in trainable_parameters(model)]
    assert any(n.endswith("intermediate.dense.bias") for n in names)  # bias=all: every bias trains
    assert not any("layer.0." in n and "lora_" in n for n in names)  # lora_layers=(1,)
    params = [p for _, p in trainable_parameters(model)]
    module = wrap_for_dp(model, params, DpSettings(1.0, Accountant.RDP))
    ids = torch.randint(1000, 2000, (3, 8))
    module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    assert all(p.grad_sample is not None and p.grad_sample.shape[0] == 3 for p in params)


def test_prompt_init_text_reads_the_local_tokenizer(llama_folder):
    loaded = _load(str(llama_folder))
    words = loaded.model.get_input_embeddings().weight.detach().clone()
    cfg = ModelConfig(source=str(llama_folder), regime=Regime.PROMPT, prompt_tokens=6,
                      prompt_init_text="hello world")
    model = apply_regime(loaded.model, cfg, Task.CAUSAL_LM, loaded.tokenizer_dir)
    assert model.peft_config["default"].tokenizer_name_or_path == str(llama_folder)
    ids = loaded.tokenizer("hello world")["input_ids"]  # [CLS] hello world [SEP], repeated to 6 tokens
    expected = words[(ids * 2)[:6]]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), expected)


def test_builtin_registry_and_lora_targets_are_unchanged():
    assert BUILTIN_BUILDERS.keys() == BUILTIN_MODELS.keys()
    assert TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["bert"] == ["query", "value"]
    assert TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"] == ["q_proj", "v_proj"]
    for source, task, targets in (("tiny_bert", Task.CLASSIFICATION, {"query", "value"}),
                                  ("tiny_llama", Task.CAUSAL_LM, {"q_proj", "v_proj"})):
        loaded = _load(source, task)
        model = apply_regime(loaded.model, ModelConfig(source=source, regime=Regime.LORA), task, loaded.tokenizer_dir)
        adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in trainable_parameters(model) if "lora_" in n}
        assert adapted == targets
