"""Membership inference: per-example attack scores from a trained model, and what they reveal.

Members are records a client trained on; non-members are records of the same distribution it never saw. Each
score is "higher = more likely a member":

* ``LOSS``: minus the example's loss, exactly privfed's training loss (:func:`privfed.models.losses.loss_from_logits`:
  cross-entropy for a classifier, the mean over scored tokens for a causal LM).
* ``ZLIB`` (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): minus the total NLL (nats)
  of the scored tokens over the zlib-compressed length (bytes) of the text: likelihood relative to how
  compressible the text is anyway, so that merely simple texts do not look memorised.
* ``MIN_K`` (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models"): the mean of the lowest
  ``k_fraction`` of the scored tokens' log-probabilities: a member has few very surprising tokens.
* ``MIN_K_PLUS_PLUS`` (Zhang et al. 2024, "Min-K%++"): the same over each token's log-probability standardised
  by the model's own next-token distribution, ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t`` and ``sigma_t`` the
  mean and standard deviation of ``log p(z)`` for ``z ~ p(. | x_<t)``: training pushes members towards local maxima
  of the likelihood, which this calibrates per position.

:func:`attack_metrics` turns member and non-member scores into the ROC AUC and the TPR at low FPRs with
confidence intervals, beside what (epsilon, delta)-DP allows any such test (:func:`dp_tpr_bound`).
"""
from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest, norm, rankdata
from torch.utils.data import TensorDataset

from privfed.config import Task
from privfed.data.tokenize import ExplicitInputs, as_batch
from privfed.models.losses import loss_from_logits, model_inputs


class ScoreKind(enum.Enum):
    """A membership score; higher means "more likely a member"."""

    LOSS = "loss"
    ZLIB = "zlib"
    MIN_K = "min_k"
    MIN_K_PLUS_PLUS = "min_k_plus_plus"


def scores_for(task: Task) -> tuple[ScoreKind, ...]:
    """The scores that apply to ``task``: a classifier has one loss per example and no tokens to rank."""
    if task is Task.CLASSIFICATION:
        return (ScoreKind.LOSS,)
    return tuple(ScoreKind)


# --- per-token quantities of a causal-LM batch ------------------------------------------------------------------


def shifted_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits that predict targets ``1..length-1``: soft-prompt positions (which come first) dropped, the last
    position (which predicts nothing) too. Shape ``[batch, length - 1, vocab]``, as in ``loss_from_logits``."""
    length = batch["input_ids"].shape[1]
    return logits[:, -length:, :][:, :-1, :]


def scored_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which shifted targets are scored (``loss_mask[t + 1]``), as a bool ``[batch, length - 1]``."""
    return batch["loss_mask"][:, 1:].bool()


MIN_SIGMA = 1e-3  # nats: Min-K%++'s floor on sigma; real next-token distributions spread by ~1 nat or more
CHUNK_ELEMENTS = 1 << 25  # logits per chunk of token_statistics (128 MiB of float32 per temporary)


@dataclass(frozen=True)
class TokenStatistics:
    """Per-target quantities of a causal-LM batch, each ``[batch, length - 1]`` (unscored positions included:
    mask them with :func:`scored_mask`)."""

    log_prob: torch.Tensor  # log p(x_t | x_<t), nats
    standardised: torch.Tensor  # Min-K%++'s (log p(x_t) - mu_t) / sigma_t


def token_statistics(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> TokenStatistics:
    """Every target's log-probability and Min-K%++ value from one log-softmax, a few examples at a time so that
    the float32 temporaries stay near :data:`CHUNK_ELEMENTS` whatever the vocabulary and length."""
    shifted = shifted_logits(logits, batch)
    targets = batch["input_ids"][:, 1:]
    rows = max(1, CHUNK_ELEMENTS // max(1, shifted.shape[1] * shifted.shape[2]))
    parts = [_chunk_statistics(shifted[i:i + rows], targets[i:i + rows]) for i in range(0, len(targets), rows)]
    return TokenStatistics(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def _chunk_statistics(shifted: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x_t), (log p(x_t) - mu_t) / sigma_t)`` with ``mu_t`` and ``sigma_t`` the mean and standard deviation
    of ``log p(z)`` under ``z ~ p(. | x_<t)`` (the model's own next-token distribution). Sigma is floored at
    :data:`MIN_SIGMA`: a (near-)flat distribution would otherwise divide float32 rounding error by itself."""
    log_p = torch.log_softmax(shifted.float(), dim=-1)
    target_log_p = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    mu = torch.linalg.vecdot(p, log_p)
    deviation = log_p.sub_(mu.unsqueeze(-1))  # in place: log_p is not needed again
    sigma = torch.linalg.vecdot(p, deviation.square_()).sqrt()  # two-pass: no cancellation in E[x^2] - E[x]^2
    return target_log_p, (target_log_p - mu) / sigma.clamp(min=MIN_SIGMA)


def lowest_fraction_mean(values: torch.Tensor, mask: torch.Tensor, k_fraction: float) -> torch.Tensor:
    """Per row, the mean of the lowest ``floor(k_fraction * n)`` of the ``n`` masked-in values (at least one, so
    short texts still get a score; the reference implementations would average an empty set)."""
    counts = mask.sum(dim=1)
    k = torch.tensor([_lowest_count(int(n), k_fraction) for n in counts.tolist()], device=values.device)
    ordered = values.masked_fill(~mask, math.inf).sort(dim=1).values
    take = torch.arange(values.shape[1], device=values.device).unsqueeze(0) < k.unsqueeze(1)
    return torch.where(take, ordered, torch.zeros_like(ordered)).sum(dim=1) / k.to(values.dtype)


def _lowest_count(n: int, k_fraction: float) -> int:
    k = math.floor(k_fraction * n)
    if (k + 1) <= k_fraction * n * (1 + 1e-12):  # k_fraction * n a hair under an integer (0.2 * 35)
        k += 1
    return max(1, min(n, k))


# --- scores ------------------------------------------------------------------------------------------------------


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) without gradients for the block; the module's own train/eval mode comes back after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where the module's parameters live (the CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def example_scores(module: torch.nn.Module, data: TensorDataset, task: Task, explicit: ExplicitInputs,
                   texts: Sequence[str] | None = None, batch_size: int = 32,
                   k_fraction: float = 0.2) -> dict[ScoreKind, np.ndarray]:
    """Every score of :func:`scores_for` ``task`` for each example of ``data`` (tokenised by
    :func:`privfed.data.tokenize.tokenize`), as float64 arrays in the order of ``data``.

    Forward passes run in eval mode without gradients on the module's device, ``batch_size`` examples at a time
    through :func:`~privfed.data.tokenize.as_batch` (so inputs match training). ``texts`` are the examples' raw
    texts, needed by ``ZLIB`` for a causal LM (ValueError if missing or of another length than ``data``); a causal
    LM example must have at least one scored token (ValueError naming those that do not: drop them first, a
    chat truncated before its assistant turn carries no membership signal). ``k_fraction`` is Min-K%'s k.
    """
    _check_inputs(data, task, texts, batch_size, k_fraction)
    kinds = scores_for(task)
    device = module_device(module)
    parts: dict[ScoreKind, list[np.ndarray]] = {kind: [] for kind in kinds}
    with evaluating(module):
        for start in range(0, len(data), batch_size):
            batch = as_batch(tuple(t[start:start + batch_size].to(device) for t in data.tensors), explicit)
            logits = module(**model_inputs(batch)).logits
            chunk = None if texts is None else texts[start:start + batch_size]
            for kind, values in _batch_scores(logits, batch, task, chunk, k_fraction).items():
                parts[kind].append(values)
    return {kind: np.concatenate(values) for kind, values in parts.items()}


def _check_inputs(data: TensorDataset, task: Task, texts: Sequence[str] | None, batch_size: int,
                  k_fraction: float) -> None:
    if len(data) == 0:
        raise ValueError("no examples to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if not 0.0 < k_fraction <= 1.0:
        raise ValueError(f"k_fraction must be in (0, 1], not {k_fraction}")
    if texts is not None and len(texts) != len(data):
        raise ValueError(f"{len(texts)} texts for {len(data)} examples")
    if task is Task.CAUSAL_LM:
        if texts is None:
            raise ValueError("the zlib score of a causal LM needs the examples' texts")
        empty = torch.nonzero(data.tensors[3][:, 1:].sum(dim=1) == 0).flatten().tolist()
        if empty:
            raise ValueError(f"{len(empty)} examples have no scored token (loss_mask), e.g. indices {empty[:5]}: "
                             f"drop them before scoring")


def _batch_scores(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: Task, texts: Sequence[str] | None,
                  k_fraction: float) -> dict[ScoreKind, np.ndarray]:
    """The batch's scores of every kind ``task`` has."""
    loss = loss_from_logits(logits, batch, task)
    out = {ScoreKind.LOSS: -loss}
    if task is Task.CAUSAL_LM:
        assert texts is not None  # _check_inputs
        mask = scored_mask(batch)
        stats = token_statistics(logits, batch)
        log_likelihood = torch.where(mask, stats.log_prob, torch.zeros_like(stats.log_prob)).sum(dim=1)
        out[ScoreKind.ZLIB] = log_likelihood / torch.tensor([zlib_length(t) for t in texts], device=mask.device)
        out[ScoreKind.MIN_K] = lowest_fraction_mean(stats.log_prob, mask, k_fraction)
        out[ScoreKind.MIN_K_PLUS_PLUS] = lowest_fraction_mean(stats.standardised, mask, k_fraction)
    return {kind: values.detach().double().cpu().numpy() for kind, values in out.items()}


def zlib_length(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (default level): ZLIB's measure of how predictable it is anyway."""
    return len(zlib.compress(text.encode("utf-8")))


# --- metrics -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateWithInterval:
    """An observed rate with its two-sided Clopper–Pearson (exact binomial) confidence interval."""

    value: float
    low: float
    high: float


def clopper_pearson(successes: int, trials: int, confidence: float) -> RateWithInterval:
    """``successes / trials`` with its exact binomial interval at ``confidence`` (scipy's ``binomtest``)."""
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return RateWithInterval(successes / trials, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class TprAtFpr:
    """The attack's true-positive rate at a threshold whose false-positive rate on the non-members is at most
    ``target_fpr``.

    ``fpr`` is the FPR that threshold achieves on the non-members (0 when there are too few of them to spend even
    one false positive). ``dp_bound`` (None without an epsilon) is :func:`dp_tpr_bound` at the *upper end of the
    FPR's Clopper–Pearson interval*, not at ``fpr`` itself: the achieved FPR is an estimate from finitely many
    non-members (0 of 100 is consistent with a true FPR of 3.6 %), and the bound at a too-low FPR would make an
    honest (epsilon, delta)-DP model look like a violation. ``tpr.low`` above ``dp_bound`` is evidence against
    the claimed guarantee.
    """

    target_fpr: float
    fpr: float
    tpr: RateWithInterval
    dp_bound: float | None


@dataclass(frozen=True)
class MembershipMetrics:
    """How well one score separates members from non-members.

    ``auc`` is the ROC AUC (sklearn's ``roc_auc_score``, ties count half); ``auc_interval`` its two-sided
    confidence interval from DeLong's variance (DeLong et al. 1988: the normal approximation over the members'
    and non-members' placement values; deterministic, handles ties), clipped to [0, 1].
    """

    score: ScoreKind
    auc: float
    auc_interval: tuple[float, float]
    members: int
    nonmembers: int
    tpr_at: tuple[TprAtFpr, ...]


def attack_metrics(score: ScoreKind, member_scores: np.ndarray, nonmember_scores: np.ndarray,
                   fprs: tuple[float, ...] = (0.01, 0.001), epsilon: float | None = None, delta: float = 0.0,
                   confidence: float = 0.95) -> MembershipMetrics:
    """AUC and TPR at each of ``fprs`` (see :class:`TprAtFpr`) of the attack "member iff score > threshold", with
    intervals at ``confidence``; with ``epsilon`` each TPR comes with the (epsilon, delta)-DP bound.

    ValueError for empty or non-1-D score arrays, NaN or infinite scores, FPRs outside (0, 1], a confidence
    outside (0, 1), or an invalid (epsilon, delta).
    """
    members = _scores_array(member_scores, "member")
    nonmembers = _scores_array(nonmember_scores, "non-member")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if epsilon is not None:
        _check_privacy(epsilon, delta)
    from sklearn.metrics import roc_auc_score  # here, not at the top: importing sklearn.metrics takes ~1.4 s

    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    auc = float(roc_auc_score(labels, np.concatenate([members, nonmembers])))
    return MembershipMetrics(
        score=score, auc=auc, auc_interval=delong_interval(members, nonmembers, auc, confidence),
        members=len(members), nonmembers=len(nonmembers),
        tpr_at=tuple(tpr_at_fpr(members, nonmembers, target, confidence, epsilon, delta) for target in fprs))


def _scores_array(values: np.ndarray, who: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{who} scores must be one-dimensional, not of shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"no {who} scores: an attack needs both members and non-members")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{bad} of {array.size} {who} scores are NaN or infinite")
    return array


def _check_privacy(epsilon: float, delta: float) -> None:
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be >= 0 (or inf), not {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], not {delta}")


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, target_fpr: float, confidence: float,
               epsilon: float | None, delta: float) -> TprAtFpr:
    """The TPR of the lowest threshold whose FPR on ``nonmembers`` is at most ``target_fpr``.

    With ``m`` the most false positives ``target_fpr`` allows among ``n`` non-members, the threshold is the
    ``(m + 1)``-th largest non-member score ("member" means strictly above it): any lower threshold would admit
    that non-member too; ties at the threshold only lower the achieved FPR.
    """
    if not 0.0 < target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in (0, 1], not {target_fpr}")
    n = len(nonmembers)
    allowed = _allowed_false_positives(target_fpr, n)
    threshold = -math.inf if allowed >= n else float(np.sort(nonmembers)[::-1][allowed])
    false_positives = int((nonmembers > threshold).sum())
    tpr = clopper_pearson(int((members > threshold).sum()), len(members), confidence)
    bound = None
    if epsilon is not None:
        bound = dp_tpr_bound(epsilon, delta, clopper_pearson(false_positives, n, confidence).high)
    return TprAtFpr(target_fpr, false_positives / n, tpr, bound)


def _allowed_false_positives(target_fpr: float, n: int) -> int:
    """The largest ``m`` with ``m / n <= target_fpr`` as floats compare (so the achieved FPR never exceeds it)."""
    m = math.floor(target_fpr * n)
    while m + 1 <= n and (m + 1) / n <= target_fpr:
        m += 1
    while m > 0 and m / n > target_fpr:
        m -= 1
    return m


def delong_interval(members: np.ndarray, nonmembers: np.ndarray, auc: float,
                    confidence: float) -> tuple[float, float]:
    """A normal-approximation interval for the AUC from DeLong's variance (placement values from mid-ranks)."""
    m, n = len(members), len(nonmembers)
    combined = rankdata(np.concatenate([members, nonmembers]))
    member_placements = (combined[:m] - rankdata(members)) / n  # share of non-members below each member
    nonmember_placements = 1.0 - (combined[m:] - rankdata(nonmembers)) / m  # share of members above each
    variance = _sample_variance(member_placements) / m + _sample_variance(nonmember_placements) / n
    half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(variance)
    return max(0.0, auc - half), min(1.0, auc + half)


def _sample_variance(values: np.ndarray) -> float:
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0


def dp_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The highest TPR any membership test with false-positive rate ``fpr`` can have against an
    (epsilon, delta)-DP mechanism (Kairouz et al. 2015's hypothesis-testing view of DP):
    ``min(1, e^eps * fpr + delta, 1 - e^-eps * (1 - delta - fpr))``; 1 for epsilon = inf."""
    _check_privacy(epsilon, delta)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], not {fpr}")
    if math.isinf(epsilon):
        return 1.0
    if fpr == 0.0:
        scaled = 0.0
    else:  # e^eps * fpr without overflowing for a huge epsilon: at or above 1 it is capped anyway
        log_scaled = epsilon + math.log(fpr)
        scaled = 1.0 if log_scaled >= 0.0 else math.exp(log_scaled)
    return min(1.0, scaled + delta, 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr))
