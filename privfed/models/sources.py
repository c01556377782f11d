"""Build networks and tokenizers from offline sources only (package folders, a cached GGUF conversion, configs)."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
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
from privfed.models.catalog import BERT_POSITIONS
from privfed.models.pooling import use_mean_pooling

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    if source == "smollm2":
        tok = AutoTokenizer.from_pretrained(smollm2_dir())
        tok.pad_token = tok.eos_token  # SmolLM2 has no pad token; eos is the standard choice
    else:  # MiniLM's WordPiece tokenizer also serves the tiny random models
        tok = AutoTokenizer.from_pretrained(assets.minilm_dir())
    return tok


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


def load_model(cfg: ModelConfig, task: Task, num_labels: int, random_init: bool, seed: int) -> LoadedModel:
    """The network in train mode (Opacus records no activations in eval mode), float32, on the CPU.

    ``random_init`` builds the architecture from its config with fresh weights (the pre-training regime).
    transformers' load report (a fresh classifier head is "MISSING", as intended) is kept out of the output.
    """
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return _load_model(cfg.source, num_labels, random_init, seed)
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def _load_model(source: str, num_labels: int, random_init: bool, seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    tok = load_tokenizer(source)
    task = Task.CLASSIFICATION if source in ("minilm", "tiny_bert") else Task.CAUSAL_LM
    if source == "minilm":
        path = assets.minilm_dir()
        if random_init:
            model = BertForSequenceClassification(BertConfig.from_pretrained(path, num_labels=num_labels))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    elif source == "tiny_bert":
        model = BertForSequenceClassification(tiny_bert_config(len(tok), num_labels))
    elif source == "smollm2":
        path = smollm2_dir()
        if random_init:
            model = LlamaForCausalLM(LlamaConfig.from_pretrained(path))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = LlamaForCausalLM(tiny_llama_config(len(tok), tok.pad_token_id))
    if task is Task.CLASSIFICATION:
        use_mean_pooling(model)
    model.train()
    return LoadedModel(model, tok, task)
