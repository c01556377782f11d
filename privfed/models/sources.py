"""Build networks and tokenizers from offline sources only: the built-ins (package folders, a cached GGUF
conversion, configs) and local Hugging Face folders or cached models (:mod:`privfed.models.locate`)."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from privfed import assets
from privfed.config import ModelConfig, Task
from privfed.models import local
from privfed.models.catalog import BERT_POSITIONS, BUILTIN_MODELS
from privfed.models.locate import check_folder, model_folder
from privfed.models.pooling import use_mean_pooling

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    tokenizer_dir: Path  # the tokenizer's local folder (peft reads it to initialise a soft prompt from text)
    max_positions: int | None  # learned absolute position embeddings (BERT-like); None: no such limit


@dataclass(frozen=True)
class Built:
    """What a built-in builder makes: the network and the tokenizer with its folder."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokenizer_dir: Path


def smollm2_dir() -> Path:
    """Float32 HF folder of SmolLM2-135M-Instruct, converted once from the packaged GGUF and cached.

    The GGUF is Q4_1; transformers de-quantises it on load (~21 s on 2 cores). A model loaded from GGUF refuses
    ``save_pretrained``, so its weights are copied into a plain ``LlamaForCausalLM`` first. The conversion is
    written to a temporary folder and renamed, so an interrupted conversion never leaves a half cache.
    """
    gguf = assets.smollm2_gguf()
    target = assets.cache_dir() / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file():
        return target
    log.warning("converting %s to a float32 cache at %s (once, ~20 s)", gguf.name, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quantised.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = LlamaForCausalLM(cfg)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def tiny_llama_config(vocab_size: int, pad_token_id: int) -> LlamaConfig:
    """A 2-layer LLaMA (~2 M parameters with MiniLM's vocabulary): for tests and CPU pre-training."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       tie_word_embeddings=False, pad_token_id=pad_token_id)


def tiny_bert_config(vocab_size: int, num_labels: int) -> BertConfig:
    """A 2-layer BERT classifier: for fast tests."""
    return BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=BERT_POSITIONS, num_labels=num_labels,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _minilm_tokenizer() -> tuple[PreTrainedTokenizerBase, Path]:
    """MiniLM's WordPiece tokenizer: MiniLM's own, and the tiny random models'."""
    path = assets.minilm_dir()
    return AutoTokenizer.from_pretrained(path), path


def _minilm(num_labels: int, random_init: bool) -> Built:
    tok, path = _minilm_tokenizer()
    if random_init:
        model = BertForSequenceClassification(BertConfig.from_pretrained(path, num_labels=num_labels))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    use_mean_pooling(model)
    return Built(model, tok, path)


def _tiny_bert(num_labels: int, random_init: bool) -> Built:
    tok, path = _minilm_tokenizer()
    model = BertForSequenceClassification(tiny_bert_config(len(tok), num_labels))
    use_mean_pooling(model)
    return Built(model, tok, path)


def _smollm2(num_labels: int, random_init: bool) -> Built:
    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.eos_token  # SmolLM2 has no pad token; eos is the standard choice
    if random_init:
        model = LlamaForCausalLM(LlamaConfig.from_pretrained(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return Built(model, tok, path)


def _tiny_llama(num_labels: int, random_init: bool) -> Built:
    tok, path = _minilm_tokenizer()
    return Built(LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id)), tok, path)


# one builder per name of privfed.models.catalog.BUILTIN_MODELS: (num_labels, random_init) -> Built
BUILTIN_BUILDERS: dict[str, Callable[[int, bool], Built]] = {
    "minilm": _minilm,
    "smollm2": _smollm2,
    "tiny_llama": _tiny_llama,
    "tiny_bert": _tiny_bert,
}


def _load_local(source: str, task: Task, num_labels: int, random_init: bool) -> Built:
    folder = model_folder(source, list(BUILTIN_MODELS))
    check_folder(folder, source, needs_weights=not random_init)
    config = local.load_config(folder, source, task)
    tok = local.load_tokenizer(folder, source)
    model = local.build_model(folder, config, task, num_labels, random_init)
    model.config.pad_token_id = tok.pad_token_id
    local.check_vocabulary(model, tok, source)
    return Built(model, tok, folder)


POSITION_EMBEDDINGS = ("position_embeddings", "wpe", "embed_positions")  # BERT/RoBERTa, GPT-2, OPT-like


def learned_positions(model: nn.Module) -> int | None:
    """Token slots a model with learned absolute position embeddings can read; None for rotary/relative ones.

    An embedding whose ``padding_idx`` is p (RoBERTa) starts counting at p + 1, so it has p + 1 fewer slots.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_EMBEDDINGS:
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            declared = getattr(model.config, "max_position_embeddings", None)
            usable = module.num_embeddings - offset
            return usable if declared is None else min(declared, usable)
    return None


def load_model(cfg: ModelConfig, task: Task, num_labels: int, random_init: bool, seed: int) -> LoadedModel:
    """The network in train mode (Opacus records no activations in eval mode), float32, on the CPU.

    ``cfg.source`` is a built-in name, else a local folder or a cached Hugging Face model
    (:func:`privfed.models.locate.model_folder`). ``random_init`` builds the architecture from its config with
    fresh weights (the pre-training regime). transformers' load report (a fresh classifier head is "MISSING", as
    intended) is kept out of the output.
    """
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(seed)
        builder = BUILTIN_BUILDERS.get(cfg.source)
        built = builder(num_labels, random_init) if builder else _load_local(cfg.source, task, num_labels,
                                                                             random_init)
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()
    built.model.train()
    return LoadedModel(built.model, built.tokenizer, task, built.tokenizer_dir, learned_positions(built.model))
