"""Adapt a base network to a training regime: decide which tensors train (and therefore travel)."""
from __future__ import annotations

import types
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, ModulesToSaveWrapper
from torch import nn
from transformers.pytorch_utils import Conv1D

from privfed.config import ModelConfig, Regime, Task
from privfed.errors import ConfigError

HEAD_NAMES = ("classifier", "score")  # the sequence-classification heads of BERT-like and decoder models
LORA_LAYER_TYPES = (nn.Linear, Conv1D)  # what a LoRA target must be here (GPT-2 writes its linears as Conv1D)


def _per_example_prompt(self, batch_size: int, task_ids=None, max_cache_len=None) -> torch.Tensor:
    """peft's ``get_prompt`` for prompt tuning, but looking the prompt up once per example.

    peft embeds one row and repeats it (its issue #2043 speed-up). Opacus computes per-sample gradients from the
    embedding layer's input, so with one row it would see a batch of 1 and clipping would fail; looking up
    ``batch_size`` rows gives Opacus' embedding grad sampler the per-example structure it needs.
    """
    encoder = self.prompt_encoder[self.active_adapter]
    tokens = self.prompt_tokens[self.active_adapter].unsqueeze(0).expand(batch_size, -1).contiguous()
    return encoder(tokens.to(encoder.embedding.weight.device))


def _make_head_trainable(model: nn.Module, source: str) -> None:
    """Train the classification head directly: peft's ``modules_to_save`` wrapper trips Opacus' hooks."""
    holder = model.base_model if hasattr(model, "base_model") else model
    found = False
    for name in HEAD_NAMES:
        module = getattr(holder, name, None)
        if isinstance(module, ModulesToSaveWrapper):
            module = module.original_module
            setattr(holder, name, module)
        if module is not None:
            found = True
            for p in module.parameters():
                p.requires_grad_(True)
    if not found:
        raise ConfigError("model.source", f"{source} has no classification head named {' or '.join(HEAD_NAMES)}, "
                                          "so adapters alone would train; use model.regime=full")


def _peft(model: nn.Module, config) -> nn.Module:
    with warnings.catch_warnings():  # peft asks transformers a question transformers has renamed: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def check_lora_layers(model: nn.Module, cfg: ModelConfig) -> None:
    """Refuse ``model.lora_layers`` that name layers the loaded model lacks.

    peft would fail deep inside ``get_peft_model`` with a traceback (or, for a partial overlap, silently adapt
    fewer layers than asked); the layer count is only known once the model is loaded, so it is checked here.
    """
    count = model.config.num_hidden_layers
    missing = sorted({i for i in cfg.lora_layers if i >= count})
    if missing:
        raise ConfigError("model.lora_layers", f"asks for layers {list(cfg.lora_layers)}, but {cfg.source} has "
                          f"{count} layers (0..{count - 1}), so {missing} do not exist; use indices below {count}, "
                          "or [] for all layers")


def lora_layer_indices(model: nn.Module, cfg: ModelConfig) -> list[int] | None:
    """The layers that get LoRA (None: all): ``model.lora_layers`` checked against the model, or its top
    ``model.lora_top_layers`` (backward then stops at the lowest adapted layer: cheaper, whatever the depth)."""
    check_lora_layers(model, cfg)
    if cfg.lora_top_layers:
        count = model.config.num_hidden_layers
        return list(range(count - cfg.lora_top_layers, count)) if cfg.lora_top_layers < count else None
    return list(cfg.lora_layers) or None


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's LoRA-able (Linear) modules, in model order."""
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LORA_LAYER_TYPES)]
    return list(dict.fromkeys(names))


def lora_targets(model: nn.Module, cfg: ModelConfig) -> list[str] | None:
    """``model.lora_targets`` checked against the model, or None for peft's default for the architecture.

    A target matches a module as peft matches it (the whole name, or its last parts after a dot).
    """
    available = linear_names(model)
    examples = ", ".join(available[:8])
    if not cfg.lora_targets:
        arch = model.config.model_type
        if arch not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ConfigError("model.lora_targets", f"peft has no default LoRA targets for {arch} models "
                                                    f"({cfg.source}); name them, e.g. model.lora_targets="
                                                    f"[{', '.join(available[:2])}] (its Linear modules: {examples})")
        return None
    linear = [n for n, m in model.named_modules() if isinstance(m, LORA_LAYER_TYPES)]
    unmatched = [t for t in cfg.lora_targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if unmatched:
        raise ConfigError("model.lora_targets", f"{', '.join(unmatched)} match no Linear module of {cfg.source}; "
                                                f"its Linear modules include {examples}")
    return list(cfg.lora_targets)


def freeze_lora_a(model: nn.Module) -> None:
    """FFA-LoRA (Sun et al., ICLR 2024): LoRA's A matrices keep peft's random initialisation and only B trains.

    Every client starts each round from the same global model, so all hold the same frozen A and the server's
    average of the B updates is exactly the average of the BA updates (plain LoRA averages B and A separately,
    which is not the average of their products). Half the adapter values train, so DP-SGD's noise, whose norm grows
    with the square root of the trained dimension, and the upload both shrink.
    """
    frozen = 0
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ConfigError("model.lora_freeze_a", "found no LoRA A matrix to freeze (peft names them lora_A)")


def apply_regime(model: nn.Module, cfg: ModelConfig, task: Task, tokenizer_dir: Path) -> nn.Module:
    """Return the model to train, with ``requires_grad`` set on exactly the tensors of the regime.

    ``tokenizer_dir`` is the model's local tokenizer folder: peft reads it to initialise a soft prompt from
    ``model.prompt_init_text``. The model must already be on its device before ``get_peft_model`` (Opacus issue
    #820: otherwise LoRA silently never updates under DP); :func:`privfed.federation.setup.build_federation` moves
    it first.
    """
    if cfg.regime in (Regime.PRETRAIN, Regime.FULL):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.regime is Regime.LORA:
        targets = lora_targets(model, cfg)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, layers_to_transform=lora_layer_indices(model, cfg),
                          bias=cfg.lora_bias.value)
        peft_model = _peft(model, lora)
        if cfg.lora_freeze_a:
            freeze_lora_a(peft_model)
    else:
        task_type = TaskType.SEQ_CLS if task is Task.CLASSIFICATION else TaskType.CAUSAL_LM
        from_text = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.prompt_init_text,
                     "tokenizer_name_or_path": str(tokenizer_dir),
                     "tokenizer_kwargs": {"local_files_only": True}} if cfg.prompt_init_text else {}
        prompt = PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.prompt_tokens, **from_text)
        peft_model = _peft(model, prompt)
        peft_model.get_prompt = types.MethodType(_per_example_prompt, peft_model)
    if task is Task.CLASSIFICATION:
        _make_head_trainable(peft_model, cfg.source)
    peft_model.train()
    return peft_model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The tensors that train and travel, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
