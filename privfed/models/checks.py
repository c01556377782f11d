"""Checks that need the loaded model in its regime, run before any client trains.

Each turns a failure that would otherwise surface mid-training (a crash in transformers, a traceback inside Opacus,
or a non-private step caught by :mod:`privfed.privacy.dpsgd`) into one :class:`~privfed.errors.ConfigError` line.
"""
from __future__ import annotations

from opacus.grad_sample import GradSampleModule
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn

from privfed.config import Clipping, DpMode, ExperimentConfig, check_positions
from privfed.errors import ConfigError
from privfed.privacy.dpsgd import refuse_tied_parameters

NEVER_CALLED = (nn.ParameterDict, nn.ParameterList)  # hold parameters but are never called: Opacus cannot hook them


def unsupported_modules(model: nn.Module) -> list[str]:
    """Type names of trainable modules Opacus cannot give per-sample gradients, by Opacus' own rules.

    A module whose type has a registered grad sampler (``GradSampleModule.GRAD_SAMPLERS``) is hooked; any other is
    computed by Opacus' functorch fallback (e.g. LLaMA's RMSNorm), except a module that holds buffers (Opacus'
    ``GradSampleModule.validate``: buffers are not private), one a module validator refuses (``ModuleValidator``,
    e.g. BatchNorm), and a parameter container that is never called.
    """
    refused = set()
    for _, module in trainable_modules(model):
        kind = type(module)
        has_buffers = next(module.buffers(), None) is not None
        validator = ModuleValidator.VALIDATORS.get(kind)
        if has_buffers or isinstance(module, NEVER_CALLED) or (validator is not None and validator(module)):
            refused.add(kind.__name__)
    return sorted(refused)


def check_before_training(model: nn.Module, cfg: ExperimentConfig, max_positions: int | None) -> None:
    """Refuse, naming the key: inputs longer than the model's learned positions; with DP, trainable modules
    Opacus cannot handle, and tied trainable weights under ghost clipping."""
    check_positions(cfg.data, cfg.model, max_positions)
    if cfg.privacy.mode is DpMode.OFF:
        return
    refused = unsupported_modules(model)
    if refused:
        raise ConfigError("model.source", f"{cfg.model.source}: Opacus has no per-sample gradients for its trainable "
                                          f"{', '.join(refused)} module(s) (supported directly: "
                                          f"{', '.join(sorted(t.__name__ for t in GradSampleModule.GRAD_SAMPLERS))}"
                                          "); train another regime or turn privacy off")
    if cfg.privacy.clipping is Clipping.GHOST:
        refuse_tied_parameters(model, [p for p in model.parameters() if p.requires_grad], cfg.model.source)
