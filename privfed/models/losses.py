"""Per-example losses. DP-SGD needs each example's gradient to depend on that example alone.

Hugging Face's causal-LM loss averages over all tokens in the batch, so one example's gradient would be scaled by
the other examples' token counts, and adding or removing a record would change everyone's clipped contribution:
the sensitivity would no longer be C. Here each example's loss is its own mean token loss; the batch loss is the
mean over examples (Opacus' ``loss_reduction="mean"``).

Which tokens count is the batch's ``loss_mask`` (:data:`privfed.data.tokenize.FIELDS`): every real token of a text,
the assistant's tokens of a chat. Target ``t + 1`` is scored when ``loss_mask[t + 1]`` is 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from privfed.config import Task


def per_example_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """Loss of each example in the batch, shape ``[batch]``."""
    return loss_from_logits(model(**model_inputs(batch)).logits, batch, task)


LOSS_FIELDS = ("labels", "loss_mask")  # what the losses here read; the network never sees them


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch fields the network takes (labels and the loss mask stay out: losses are computed here, per
    example)."""
    return {k: v for k, v in batch.items() if k not in LOSS_FIELDS}


def loss_from_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    if task is Task.CLASSIFICATION:
        return F.cross_entropy(logits, batch["labels"], reduction="none")
    length = batch["input_ids"].shape[1]
    logits = logits[:, -length:, :]  # soft-prompt positions (if any) come first
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].to(logits.dtype)
    token_loss = F.cross_entropy(logits[:, :-1, :].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 reduction="none").view_as(mask)
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def token_counts(batch: dict[str, torch.Tensor], task: Task) -> torch.Tensor:
    """Scored tokens per example (1 per example for classification): the weights for corpus perplexity, which is
    therefore over the assistant's tokens for chat data."""
    if task is Task.CLASSIFICATION:
        return torch.ones(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    return batch["loss_mask"][:, 1:].sum(dim=1).to(torch.float32)
