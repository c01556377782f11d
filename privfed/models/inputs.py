"""Which inputs a network must receive per example, so that Opacus sees one row per example in every layer.

BERT-style encoders look their learned position (and token-type) embeddings up with one row broadcast over the
batch when ``position_ids`` / ``token_type_ids`` are not given. When those embeddings train (full fine-tuning,
pre-training), Opacus would then see a batch of 1 for them and fail, so privfed passes them explicitly. Rotary
models (LLaMA) have no position embedding to train, and RoBERTa-style models, whose embeddings count positions
from ``padding_idx + 1``, already derive per-example positions from the ids: neither gets explicit positions.
"""
from __future__ import annotations

import inspect

from torch import nn

from privfed.config import Regime
from privfed.data.tokenize import NO_EXPLICIT_INPUTS, ExplicitInputs
from privfed.models.sources import POSITION_EMBEDDINGS


def explicit_inputs(model: nn.Module, regime: Regime) -> ExplicitInputs:
    """What ``model`` (before peft wraps it) needs explicitly in ``regime``; nothing unless its embeddings train."""
    if regime not in (Regime.FULL, Regime.PRETRAIN):
        return NO_EXPLICIT_INPUTS
    accepted = inspect.signature(model.forward).parameters
    broadcast_positions = any(
        isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_EMBEDDINGS
        and module.padding_idx is None for name, module in model.named_modules())
    token_types = getattr(model.config, "type_vocab_size", 0) or 0
    return ExplicitInputs(position_ids=broadcast_positions and "position_ids" in accepted,
                          token_type_ids=token_types > 0 and "token_type_ids" in accepted)
