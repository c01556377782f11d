"""Held-out evaluation: accuracy for classification, loss and perplexity for causal language models."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privfed.config import Task
from privfed.data.tokenize import NO_EXPLICIT_INPUTS, ExplicitInputs, as_batch
from privfed.models.losses import loss_from_logits, model_inputs, token_counts


def _metrics(loss_sum: float, weight: float, correct: float, count: float, task: Task,
             prefix: str = "eval_") -> dict[str, float]:
    loss = loss_sum / max(weight, 1.0)
    if task is Task.CLASSIFICATION:
        return {f"{prefix}loss": loss, f"{prefix}accuracy": correct / max(count, 1)}
    return {f"{prefix}loss": loss, f"{prefix}perplexity": math.exp(min(loss, 50.0))}


@dataclass(frozen=True)
class EvaluationSums:
    """What held-out metrics are made of, as sums that add up across clients: the loss summed over the examples
    (classification) or tokens (causal LM) it is averaged over, their number, and the correct predictions among
    ``count`` examples."""

    loss_sum: float
    weight: float
    correct: float
    count: float

    def __add__(self, other: EvaluationSums) -> EvaluationSums:
        return EvaluationSums(self.loss_sum + other.loss_sum, self.weight + other.weight,
                              self.correct + other.correct, self.count + other.count)

    def metrics(self, task: Task, prefix: str = "eval_") -> dict[str, float]:
        return _metrics(self.loss_sum, self.weight, self.correct, self.count, task, prefix)


def evaluation_sums(model: nn.Module, data: TensorDataset, task: Task, batch_size: int = 64,
                    explicit: ExplicitInputs = NO_EXPLICIT_INPUTS) -> EvaluationSums:
    """The held-out sums of ``data`` (one client's held-out records, in federated evaluation)."""
    losses, weights, correct = _forward(model, data, task, batch_size, explicit)
    return EvaluationSums(float((losses * weights).sum()), float(weights.sum()), float(correct.sum()), len(data))


def _forward(model: nn.Module, data: TensorDataset, task: Task, batch_size: int,
             explicit: ExplicitInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: its loss, the weight it is averaged with (1, or its tokens), and whether it was classified
    correctly (False for a causal LM)."""
    if len(data) == 0:
        raise ValueError("no held-out examples to evaluate on: raise data.test_fraction or data.eval_examples")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses_all, weights_all, correct_all = [], [], []
    with torch.no_grad():
        for tensors in DataLoader(data, batch_size=batch_size):
            batch = as_batch(tuple(t.to(device) for t in tensors), explicit)
            logits = model(**model_inputs(batch)).logits
            losses_all.append(loss_from_logits(logits, batch, task).double().cpu())
            weights_all.append(token_counts(batch, task).double().cpu())
            if task is Task.CLASSIFICATION:
                correct_all.append((logits.argmax(dim=-1) == batch["labels"]).cpu())
    model.train(was_training)
    losses, weights = torch.cat(losses_all).numpy(), torch.cat(weights_all).numpy()
    correct = torch.cat(correct_all).numpy() if correct_all else np.zeros(len(losses), dtype=bool)
    return losses, weights, correct


def evaluate(model: nn.Module, data: TensorDataset, task: Task, batch_size: int = 64,
             explicit: ExplicitInputs = NO_EXPLICIT_INPUTS, owners: np.ndarray | None = None) -> dict:
    """``eval_loss`` and ``eval_accuracy`` (classification) or ``eval_perplexity`` (causal LM, token-weighted).

    With ``owners`` (a client id per example, -1 for none) the same forward pass also gives ``per_client``:
    client id (as a string, for JSON) -> its metrics and example count, over the held-out examples of its own
    natural groups. That is how a non-IID federation's clients each fare, at no extra cost.
    """
    if owners is not None and len(owners) != len(data):
        raise ValueError(f"{len(owners)} owners for {len(data)} held-out examples")
    losses, weights, correct = _forward(model, data, task, batch_size, explicit)
    out: dict = _metrics(float((losses * weights).sum()), float(weights.sum()), int(correct.sum()), len(data), task)
    if owners is not None:
        out["per_client"] = {
            str(cid): {**_metrics(float((losses[m] * weights[m]).sum()), float(weights[m].sum()), int(correct[m].sum()),
                                  int(m.sum()), task), "examples": int(m.sum())}
            for cid in sorted(set(owners.tolist()) - {-1}) for m in [owners == cid]}
    return out
