"""Federated evaluation's arithmetic: a client's held-out sums as a contribution, and the federation's totals back.

After every round each sampled client evaluates the global model on its own held-out records (``evaluation.where``
clients or both). What it sends has the form every aggregation back-end sums, ``[w * loss / LOSS_CAP, w * accuracy,
w]``, with ``w`` its held-out weight (examples for a classifier, tokens for a causal LM) over a public scale that
keeps every value in [0, 1]; the sum gives the federation's weighted mean loss and accuracy exactly as if the
server had pooled the records — which it never sees. Under secagg the server learns only these totals; under plain
aggregation it also sees each client's (reported per client, as the method shows them). The totals are not noised:
their release is not in ε.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from privfed.config import AggregationConfig, ExperimentConfig, Task
from privfed.evaluation import EvaluationSums

LOSS_CAP = 20.0  # nats: a client whose mean held-out loss is larger sends 20 (perplexity e^20)
PREFIX = "fed_"  # the federation's metrics in a round's row: fed_loss, fed_accuracy | fed_perplexity


def evaluation_scale(cfg: ExperimentConfig, task: Task, weight_cap: int) -> float:
    """The public bound on a client's held-out weight: with data.validation_fraction <= 0.5 a client holds out at
    most its training examples plus one, and ``weight_cap`` is the largest client's training examples; a causal
    LM's weight is tokens, at most data.max_length an example."""
    return float(weight_cap + 1) * (1 if task is Task.CLASSIFICATION else cfg.data.max_length)


def evaluation_contribution(sums: EvaluationSums, scale: float) -> np.ndarray:
    """What a client sends: ``[w * min(loss, LOSS_CAP) / LOSS_CAP, w * accuracy, w]`` with ``w = weight / scale``
    (a non-finite loss is sent as LOSS_CAP)."""
    w = min(1.0, sums.weight / scale)
    mean = sums.loss_sum / max(sums.weight, 1.0)
    loss = (min(mean, LOSS_CAP) if math.isfinite(mean) else LOSS_CAP) / LOSS_CAP  # a diverged model: the cap
    accuracy = sums.correct / max(sums.count, 1.0)
    return np.array([w * loss, w * accuracy, w], dtype=np.float64)


def federation_metrics(total: np.ndarray, task: Task, clients: int) -> dict:
    """The federation's held-out metrics from the sum of the clients' contributions (and how many summed)."""
    weight = float(total[-1])
    if weight <= 0:
        return {f"{PREFIX}clients": clients}
    loss = LOSS_CAP * float(total[0]) / weight
    quality = ({f"{PREFIX}accuracy": float(total[1]) / weight} if task is Task.CLASSIFICATION
               else {f"{PREFIX}perplexity": float(np.exp(min(loss, 50.0)))})
    return {f"{PREFIX}loss": loss, **quality, f"{PREFIX}clients": clients}


def evaluation_aggregation(cfg: AggregationConfig) -> AggregationConfig:
    """The run's aggregation method, sized for three values in [0, 1]: the same protocol and key files as the
    updates' (in process, Paillier without a key file generates the evaluation's own pair), with exact words and no
    simulated dropouts (the evaluation is not what they test)."""
    return dataclasses.replace(cfg, clip_range=1.0, value_bits=0, word_bits=0, rotation=False, dropout_fraction=0.0,
                               workers=1)


EVALUATION_VALUES = 3  # the length of a client's evaluation contribution
