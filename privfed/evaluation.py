"""Held-out evaluation: accuracy for classification, loss and perplexity for causal language models."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfed.data.tokenize import as_batch
from privfed.models.losses import loss_from_logits, model_inputs, token_counts
from privfed.models.sources import Task


def evaluate(model: nn.Module, data: TensorDataset, task: Task, batch_size: int = 64,
             explicit_positions: bool = False) -> dict[str, float]:
    """``eval_loss`` and ``eval_accuracy`` (classification) or ``eval_perplexity`` (causal LM, token-weighted)."""
    was_training = model.training
    model.eval()
    total_loss, total_weight, correct = 0.0, 0.0, 0
    with torch.no_grad():
        for tensors in DataLoader(data, batch_size=batch_size):
            batch = as_batch(tuple(tensors), explicit_positions)
            logits = model(**model_inputs(batch)).logits
            losses = loss_from_logits(logits, batch, task)
            weights = token_counts(batch, task)
            total_loss += float((losses * weights).sum())
            total_weight += float(weights.sum())
            if task is Task.CLASSIFICATION:
                correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
    model.train(was_training)
    loss = total_loss / max(total_weight, 1.0)
    if task is Task.CLASSIFICATION:
        return {"eval_loss": loss, "eval_accuracy": correct / len(data)}
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
