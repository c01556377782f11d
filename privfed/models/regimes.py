"""Adapt a base network to a training regime: decide which tensors train (and therefore travel)."""
from __future__ import annotations

import types
import warnings

import torch
from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper
from torch import nn

from privfed.config import ModelConfig, Regime, Task
from privfed.errors import ConfigError

LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


def _per_example_prompt(self, batch_size: int, task_ids=None, max_cache_len=None) -> torch.Tensor:
    """peft's ``get_prompt`` for prompt tuning, but looking the prompt up once per example.

    peft embeds one row and repeats it (its issue #2043 speed-up). Opacus computes per-sample gradients from the
    embedding layer's input, so with one row it would see a batch of 1 and clipping would fail; looking up
    ``batch_size`` rows gives Opacus' embedding grad sampler the per-example structure it needs.
    """
    encoder = self.prompt_encoder[self.active_adapter]
    tokens = self.prompt_tokens[self.active_adapter].unsqueeze(0).expand(batch_size, -1).contiguous()
    return encoder(tokens.to(encoder.embedding.weight.device))


def _make_head_trainable(model: nn.Module) -> None:
    """Train the classification head directly: peft's ``modules_to_save`` wrapper trips Opacus' hooks."""
    holder = model.base_model if hasattr(model, "base_model") else model
    for name in ("classifier", "score"):
        module = getattr(holder, name, None)
        if isinstance(module, ModulesToSaveWrapper):
            module = module.original_module
            setattr(holder, name, module)
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)


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


def apply_regime(model: nn.Module, cfg: ModelConfig, task: Task) -> nn.Module:
    """Return the model to train, with ``requires_grad`` set on exactly the tensors of the regime.

    The model must already be on its device before ``get_peft_model`` (Opacus issue #820: otherwise LoRA
    silently never updates under DP); :func:`privfed.federation.setup.build_federation` moves it first.
    """
    if cfg.regime in (Regime.PRETRAIN, Regime.FULL):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    arch = model.config.model_type
    if cfg.regime is Regime.LORA:
        targets = LORA_TARGETS.get(arch)
        if targets is None:
            raise ValueError(f"no LoRA target modules known for architecture {arch!r}")
        check_lora_layers(model, cfg)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                          layers_to_transform=list(cfg.lora_layers) or None, bias="none")
        peft_model = _peft(model, lora)
    else:
        task_type = TaskType.SEQ_CLS if task is Task.CLASSIFICATION else TaskType.CAUSAL_LM
        prompt = PromptTuningConfig(task_type=task_type, num_virtual_tokens=cfg.prompt_tokens)
        peft_model = _peft(model, prompt)
        peft_model.get_prompt = types.MethodType(_per_example_prompt, peft_model)
    if task is Task.CLASSIFICATION:
        _make_head_trainable(peft_model)
    peft_model.train()
    return peft_model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The tensors that train and travel, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
