"""Masked mean pooling for BERT classifiers, the pooling all-MiniLM-L6-v2 was trained with.

``BertForSequenceClassification`` classifies from the [CLS] token through a tanh pooler, which sentence-transformers
models never trained; their sentence embedding is the mean of the token states over the attention mask. Swapping
the pooler keeps the standard HF class (so peft and Opacus work unchanged) while the head reads the embedding the
encoder was trained to produce.
"""
from __future__ import annotations

import torch
from torch import nn


class MaskedMeanPooler(nn.Module):
    """Mean of the hidden states over the positions the encoder's attention mask marks (no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self._mask: torch.Tensor | None = None

    def remember_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._mask = kwargs.get("attention_mask")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        if mask is None or mask.shape[1] != hidden_states.shape[1]:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def use_mean_pooling(model: nn.Module) -> None:
    """Replace ``model.bert.pooler`` with :class:`MaskedMeanPooler` (fed the mask by a forward pre-hook)."""
    pooler = MaskedMeanPooler()
    model.bert.pooler = pooler
    model.bert.register_forward_pre_hook(pooler.remember_mask, with_kwargs=True)
