"""Build the network and tokenizer of a local Hugging Face folder for a task, refusing what cannot work.

Everything is read with ``local_files_only=True`` (never downloaded) and no remote code is trusted.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MASKED_LM_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from privfed.config import Task
from privfed.errors import ConfigError

log = logging.getLogger(__name__)


def load_config(folder: Path, source: str, task: Task) -> PretrainedConfig:
    """The folder's config, refused when transformers cannot build that architecture for ``task``."""
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError("model.source", f"{source}: transformers cannot read {folder / 'config.json'} "
                                          f"({str(err).splitlines()[0]})") from None
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if task is Task.CAUSAL_LM else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    if type(config) not in mapping:
        raise ConfigError("model.task", f"{source} is a {config.model_type} model, which transformers cannot build "
                                        f"for {task.value}; use the other model.task or another model")
    if task is Task.CAUSAL_LM and is_encoder(config):
        raise ConfigError("model.task", f"{source} is a {config.model_type} encoder: it attends to the whole text, "
                                        "so it cannot learn next-token prediction; use model.task=classification "
                                        "or a decoder model")
    return config


def is_encoder(config: PretrainedConfig) -> bool:
    """A masked-LM encoder (BERT, RoBERTa, ...) that its config does not declare a decoder."""
    return type(config) in MODEL_FOR_MASKED_LM_MAPPING and not config.is_decoder and not config.is_encoder_decoder


def load_tokenizer(folder: Path, source: str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer. Automatic fix: without a pad token, pad with the eos token (the usual choice for
    decoders; padded positions are masked out of every loss); neither pad nor eos is refused."""
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError("model.source", f"{source}: no usable tokenizer files in {folder} "
                                          f"({str(err).splitlines()[0]})") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError("model.source", f"{source}: its tokenizer has neither a pad nor an eos token; add a "
                                              "pad_token to the folder's tokenizer_config.json")
        log.info("%s: the tokenizer has no pad token; padding with its eos token %r", source, tok.eos_token)
        tok.pad_token = tok.eos_token
    return tok


def build_model(folder: Path, config: PretrainedConfig, task: Task, num_labels: int,
                random_init: bool) -> PreTrainedModel:
    """The network for ``task``: fresh weights from the config (``random_init``), else the folder's weights.

    A classifier's head is fresh whenever the folder has none of this shape (a base model, or another label count).
    """
    if task is Task.CLASSIFICATION:
        config.num_labels = num_labels
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModelForCausalLM
    if random_init:
        model = auto.from_config(config, dtype=torch.float32)
    else:
        model = auto.from_pretrained(folder, config=config, local_files_only=True, dtype=torch.float32,
                                     ignore_mismatched_sizes=task is Task.CLASSIFICATION)
    return model.to(torch.float32)


def check_vocabulary(model: PreTrainedModel, tok: PreTrainedTokenizerBase, source: str) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table (it would fail mid-training)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise ConfigError("model.source", f"{source}: its tokenizer has {len(tok)} tokens but the model embeds "
                                          f"only {rows}; the tokenizer files do not belong to this model")


def load_initial_weights(model: PreTrainedModel, path: str) -> None:
    """``model.init_weights``: the whole network's weights from a .safetensors file (as
    :func:`safetensors.torch.save_model` writes them, shared tensors included), refused unless they fit exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    file = Path(path)
    if not file.is_file():
        raise ConfigError("model.init_weights", f"no such file: {file}")
    try:
        missing, unexpected = load_model(model, file, strict=False)
    except (SafetensorError, RuntimeError) as err:
        raise ConfigError("model.init_weights", f"{file} does not fit this model: {err}") from None
    if missing or unexpected:
        raise ConfigError("model.init_weights", f"{file} does not fit this model: missing {sorted(missing)[:3]}, "
                                                f"unexpected {sorted(unexpected)[:3]}")
