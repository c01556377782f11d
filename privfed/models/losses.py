"""Per-example losses. DP-SGD needs each example's gradient to depend on that example alone.

Hugging Face's causal-LM loss averages over all tokens in the batch, so one example's gradient would be scaled by
the other examples' token counts, and adding or removing a record would change everyone's clipped contribution:
the sensitivity would no longer be C. Here each example's loss is its own mean token loss; the batch loss is the
mean over examples (Opacus' ``loss_reduction="mean"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from privfed.config import Task


def per_example_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """Loss of each example in the batch, shape ``[batch]``."""
    return loss_from_logits(model(**model_inputs(batch)).logits, batch, task)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch fields the network takes (labels stay out: losses are computed here, per example)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def loss_from_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    if task is Task.CLASSIFICATION:
        return F.cross_entropy(logits, batch["labels"], reduction="none")
    length = batch["input_ids"].shape[1]
    logits = logits[:, -length:, :]  # soft-prompt positions (if any) come first
    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].to(logits.dtype)
    token_loss = F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 reduction="none").view_as(mask)
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def token_counts(batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """Predicted tokens per example (1 per example for classification): the weights for corpus perplexity."""
    if task is Task.CLASSIFICATION:
        return torch.ones(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    return batch["attention_mask"][:, 1:].sum(dim=1).to(torch.float32)
