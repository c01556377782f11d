"""Membership inference: the DP bound on a test's TPR, the metrics (AUC with DeLong's interval, TPR at low FPR with
Clopper–Pearson intervals), the four scores pinned by hand on fixed logits, and a null and positive control on
tiny real models (the causal-LM positive control shares its trained model with the exposure tests, in
test_audit_exposure.py)."""
from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from torch import nn
from torch.utils.data import TensorDataset

from privfed.audit import membership
from privfed.audit.membership import (
    ScoreKind,
    attack_metrics,
    dp_tpr_bound,
    example_scores,
    scores_for,
)
from privfed.config import Task
from privfed.data.records import TextDataset
from privfed.data.sources import load_data
from privfed.data.tokenize import NO_EXPLICIT_INPUTS, as_batch, tokenize
from privfed.models.inputs import explicit_inputs
from privfed.models.losses import per_example_loss
from privfed.models.sources import load_model

# ---- the DP bound ----


def test_dp_bound_at_epsilon_zero_is_fpr_plus_delta_and_infinity_allows_anything():
    assert dp_tpr_bound(0.0, 0.0, 0.1) == pytest.approx(0.1)
    assert dp_tpr_bound(0.0, 0.01, 0.1) == pytest.approx(0.11)
    assert dp_tpr_bound(math.inf, 0.0, 0.0) == 1.0
    assert dp_tpr_bound(1.0, 0.0, 0.1) == pytest.approx(math.e * 0.1)  # the e^eps * FPR side binds
    assert dp_tpr_bound(1.0, 0.0, 0.9) == pytest.approx(1 - math.exp(-1) * 0.1)  # the other side binds
    assert dp_tpr_bound(1000.0, 0.01, 0.0) == pytest.approx(0.01)  # no overflow; FPR 0 leaves only delta
    assert dp_tpr_bound(1000.0, 0.0, 1e-6) == 1.0


def test_dp_bound_grows_with_epsilon_and_fpr():
    epsilons = [0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf]
    fprs = np.linspace(0.0, 1.0, 21)
    table = np.array([[dp_tpr_bound(e, 1e-5, f) for f in fprs] for e in epsilons])
    assert (np.diff(table, axis=0) >= -1e-12).all() and (np.diff(table, axis=1) >= -1e-12).all()
    assert (table <= 1.0).all() and (table >= fprs).all()  # no test does worse than guessing is allowed


def test_dp_bound_rejects_bad_arguments():
    for args in [(-1.0, 0.0, 0.1), (math.nan, 0.0, 0.1), (1.0, 1.5, 0.1), (1.0, 0.0, -0.1)]:
        with pytest.raises(ValueError):
            dp_tpr_bound(*args)


# ---- the metrics ----


def test_identical_distributions_give_chance_auc_and_tpr_near_fpr():
    scores = np.random.default_rng(7).normal(size=1000)
    m = attack_metrics(ScoreKind.LOSS, scores[:500], scores[500:])
    assert 0.44 <= m.auc <= 0.56
    assert m.auc_interval[0] <= m.auc <= m.auc_interval[1]
    # DeLong's SE at AUC 0.5 is close to the null's exact sqrt((m + n + 1) / (12 m n))
    assert m.auc_interval[1] - m.auc_interval[0] == pytest.approx(2 * 1.96 * math.sqrt(1001 / (12 * 500 * 500)),
                                                                  rel=0.1)
    at1 = m.tpr_at[0]
    assert at1.target_fpr == 0.01 and at1.fpr <= 0.01
    assert at1.tpr.low <= 0.01 <= at1.tpr.high
    assert (m.members, m.nonmembers) == (500, 500)


def test_perfect_separation():
    rng = np.random.default_rng(1)
    m = attack_metrics(ScoreKind.LOSS, 1.0 + rng.random(50), -rng.random(70), fprs=(0.01, 0.001))
    assert m.auc == 1.0 and m.auc_interval == (1.0, 1.0)
    for point in m.tpr_at:
        assert point.fpr == 0.0 and point.tpr.value == 1.0 and point.tpr.high == 1.0 and point.dp_bound is None


@pytest.mark.parametrize("nonmembers", [37, 100, 250, 1000, 2000])
def test_threshold_keeps_the_achieved_fpr_at_most_the_target_and_intervals_are_clopper_pearson(nonmembers):
    rng = np.random.default_rng(nonmembers)
    members, others = rng.normal(0.5, 1.0, 300), rng.normal(0.0, 1.0, nonmembers)
    fprs = (0.1, 0.07, 0.01, 0.001)
    m = attack_metrics(ScoreKind.MIN_K, members, others, fprs=fprs, confidence=0.9)
    for target, point in zip(fprs, m.tpr_at, strict=True):
        assert point.target_fpr == target and 0.0 <= point.fpr <= target
        spent = round(point.fpr * nonmembers)
        assert spent == math.floor(target * nonmembers + 1e-9)  # the whole budget is spent (no ties here)
        # the most permissive threshold: members strictly above the (spent + 1)-th largest non-member score
        threshold = np.sort(others)[::-1][spent]
        hits = int((members > threshold).sum())
        ci = binomtest(hits, 300).proportion_ci(confidence_level=0.9, method="exact")
        assert point.tpr.value == hits / 300
        assert (point.tpr.low, point.tpr.high) == pytest.approx((ci.low, ci.high))
        assert point.tpr.low <= point.tpr.value <= point.tpr.high
    if nonmembers < 1000:
        assert m.tpr_at[-1].fpr == 0.0  # too few non-members to spend a false positive at 0.1 %


def test_dp_bound_is_taken_at_the_fpr_upper_confidence_limit():
    rng = np.random.default_rng(3)
    m = attack_metrics(ScoreKind.LOSS, rng.normal(1, 1, 200), rng.normal(0, 1, 100), fprs=(0.01,), epsilon=2.0,
                       delta=1e-5)
    point = m.tpr_at[0]
    spent = round(point.fpr * 100)
    high = binomtest(spent, 100).proportion_ci(confidence_level=0.95, method="exact").high
    assert point.dp_bound == pytest.approx(dp_tpr_bound(2.0, 1e-5, high))
    assert point.dp_bound > dp_tpr_bound(2.0, 1e-5, point.fpr)


def test_invalid_scores_are_refused_clearly():
    good = np.zeros(5)
    with pytest.raises(ValueError, match="no member scores"):
        attack_metrics(ScoreKind.LOSS, np.array([]), good)
    with pytest.raises(ValueError, match="no non-member scores"):
        attack_metrics(ScoreKind.LOSS, good, np.array([]))
    with pytest.raises(ValueError, match="1 of 5 non-member scores are NaN"):
        attack_metrics(ScoreKind.LOSS, good, np.array([0, 1, np.nan, 2, 3]))
    with pytest.raises(ValueError, match="one-dimensional"):
        attack_metrics(ScoreKind.LOSS, np.zeros((2, 2)), good)
    with pytest.raises(ValueError, match="target FPR"):
        attack_metrics(ScoreKind.LOSS, good, good, fprs=(0.0,))


# ---- the scores, by hand on fixed logits ----


class BigramLogits(nn.Module):
    """A fake causal LM: the logits after token x are ``table[x]`` (so a hand computation can follow them), behind
    ``prompt`` soft-prompt positions of garbage. Records whether it ran in eval mode."""

    def __init__(self, table: torch.Tensor, prompt: int = 0):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)
        self.prompt = prompt
        self.modes: list[bool] = []

    def forward(self, input_ids, attention_mask):
        self.modes.append(self.training)
        logits = self.table[input_ids]
        garbage = torch.full((input_ids.shape[0], self.prompt, self.table.shape[1]), 50.0)
        return SimpleNamespace(logits=torch.cat([garbage, logits], dim=1))


def _dataset(rows: list[list[int]], scored: list[list[int]], width: int) -> TensorDataset:
    """Right-padded input_ids / attention_mask / labels / loss_mask, as privfed.data.tokenize builds them."""
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids)
    for r, (tokens, mask) in enumerate(zip(rows, scored, strict=True)):
        ids[r, :len(tokens)] = torch.tensor(tokens)
        attention[r, :len(tokens)] = 1
        loss_mask[r, :len(tokens)] = torch.tensor(mask)
    return TensorDataset(ids, attention, torch.zeros(len(rows), dtype=torch.long), loss_mask)


ROWS = [[1, 4, 2, 6, 3, 0, 5, 2, 1, 4, 6], [2, 5, 5, 1], [3, 3, 6, 0, 2, 4, 1, 1]]
SCORED = [[1] * 11, [1, 1, 0, 1], [0, 0, 0, 1, 1, 1, 1, 0]]  # the last two: chat-like assistant spans
TEXTS = ["a whole text of eleven tokens", "hi hi", "user: hello assistant: fine"]


def _by_hand(table: np.ndarray, tokens: list[int], mask: list[int], text: str, k: float) -> dict[ScoreKind, float]:
    log_p, standardised = [], []
    for t in range(1, len(tokens)):
        if not mask[t]:
            continue
        row = table[tokens[t - 1]].astype(np.float64)
        lp = row - np.log(np.exp(row).sum())
        mu = float((np.exp(lp) * lp).sum())
        sigma = math.sqrt(float((np.exp(lp) * (lp - mu) ** 2).sum()))
        log_p.append(float(lp[tokens[t]]))
        standardised.append((float(lp[tokens[t]]) - mu) / sigma)
    lowest = max(1, math.floor(k * len(log_p) + 1e-9))
    return {ScoreKind.LOSS: float(np.mean(log_p)),
            ScoreKind.ZLIB: sum(log_p) / len(zlib.compress(text.encode())),
            ScoreKind.MIN_K: float(np.mean(sorted(log_p)[:lowest])),
            ScoreKind.MIN_K_PLUS_PLUS: float(np.mean(sorted(standardised)[:lowest]))}


@pytest.mark.parametrize("prompt, batch_size, k, chunk", [(0, 32, 0.2, None), (3, 1, 0.2, None), (0, 2, 0.5, None),
                                                          (2, 32, 0.2, 1)])
def test_causal_lm_scores_match_a_hand_computation(monkeypatch, prompt, batch_size, k, chunk):
    if chunk is not None:  # one example per log-softmax chunk
        monkeypatch.setattr(membership, "CHUNK_ELEMENTS", chunk)
    table = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 2
    module = BigramLogits(table, prompt).train()
    got = example_scores(module, _dataset(ROWS, SCORED, 14), Task.CAUSAL_LM, NO_EXPLICIT_INPUTS, texts=TEXTS,
                         batch_size=batch_size, k_fraction=k)
    assert set(got) == set(ScoreKind) == set(scores_for(Task.CAUSAL_LM))
    for i, (tokens, mask, text) in enumerate(zip(ROWS, SCORED, TEXTS, strict=True)):
        for kind, value in _by_hand(table.numpy(), tokens, mask, text, k).items():
            assert got[kind][i] == pytest.approx(value, rel=1e-5, abs=1e-6), (kind, i)
    assert module.training and module.modes and not any(module.modes)  # scored in eval mode, then restored


def test_uniform_logits_pin_the_formulas():
    """Every token has probability 1/7: LOSS and MIN_K are -ln 7, MIN_K++ is 0 (no token beats the mean),
    ZLIB is -(scored tokens * ln 7) / zlib length."""
    got = example_scores(BigramLogits(torch.zeros(7, 7)), _dataset(ROWS, SCORED, 12), Task.CAUSAL_LM,
                         NO_EXPLICIT_INPUTS, texts=TEXTS)
    assert got[ScoreKind.LOSS] == pytest.approx([-math.log(7)] * 3)
    assert got[ScoreKind.MIN_K] == pytest.approx([-math.log(7)] * 3)
    assert got[ScoreKind.MIN_K_PLUS_PLUS] == pytest.approx([0.0] * 3, abs=1e-3)
    scored = [10, 2, 4]
    assert got[ScoreKind.ZLIB] == pytest.approx([-n * math.log(7) / len(zlib.compress(t.encode()))
                                                 for n, t in zip(scored, TEXTS, strict=True)])


def test_scoring_refuses_what_it_cannot_score():
    module, data = BigramLogits(torch.zeros(7, 7)), _dataset(ROWS, SCORED, 12)
    with pytest.raises(ValueError, match="texts"):
        example_scores(module, data, Task.CAUSAL_LM, NO_EXPLICIT_INPUTS)
    with pytest.raises(ValueError, match="2 texts for 3 examples"):
        example_scores(module, data, Task.CAUSAL_LM, NO_EXPLICIT_INPUTS, texts=TEXTS[:2])
    with pytest.raises(ValueError, match="no scored token"):
        example_scores(module, _dataset(ROWS, [[1] * 11, [1, 0, 0, 0], [1] * 8], 12), Task.CAUSAL_LM,
                       NO_EXPLICIT_INPUTS, texts=TEXTS)
    assert scores_for(Task.CLASSIFICATION) == (ScoreKind.LOSS,)


# ---- controls on tiny real models ----


def test_null_control_a_model_that_saw_neither_half_cannot_tell_them_apart():
    """A random tiny LLaMA scores two disjoint random halves of the same data (64 + 64 chatterbot texts): every
    score's AUC stays near 0.5 (the null's SD is ~0.05 here; the band is about 4 SD). The positive controls (below,
    and in test_audit_exposure.py) catch a sign error; this one catches scores that depend on an example's
    position or batch rather than its text."""
    from conftest import TINY_CAUSAL, make_config

    cfg = make_config(TINY_CAUSAL)
    loaded = load_model(cfg.model, Task.CAUSAL_LM, 1, random_init=True, seed=11)
    pool = load_data(cfg.data)
    picked = pool.subset(np.random.default_rng(5).choice(len(pool), 128, replace=False))
    data = tokenize(picked, loaded.tokenizer, 16)  # the first 16 tokens are plenty for a null control
    scores = example_scores(loaded.model, data, Task.CAUSAL_LM, NO_EXPLICIT_INPUTS, texts=picked.examples,
                            batch_size=64)
    assert set(scores) == set(ScoreKind)
    for kind, values in scores.items():
        assert np.isfinite(values).all() and values.shape == (128,)
        assert 0.3 <= attack_metrics(kind, values[:64], values[64:]).auc <= 0.7, kind
    assert loaded.model.training  # load_model's train mode is back


def _train(model: nn.Module, data: TensorDataset, task: Task, explicit, steps: int, lr: float) -> None:
    batch = as_batch(data.tensors, explicit)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        per_example_loss(model, batch, task).mean().backward()
        optimizer.step()


def test_positive_control_a_classifier_that_memorised_its_members_is_caught():
    """tiny_bert trained on 16 BBC texts with random labels (nothing to generalise) is told from 32 more with
    random labels by its loss (AUC > 0.8; a flipped sign would give an AUC near 0)."""
    from conftest import TINY_CLASSIFIER, make_config

    cfg = make_config(TINY_CLASSIFIER)
    pool = load_data(cfg.data)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pool), 48, replace=False)
    labelled = TextDataset(tuple(pool.examples[i] for i in idx), tuple(int(y) for y in rng.integers(0, 4, 48)),
                           ("",) * 48)
    loaded = load_model(cfg.model, Task.CLASSIFICATION, 4, random_init=True, seed=3)
    explicit = explicit_inputs(loaded.model, cfg.model.regime)
    members = tokenize(labelled.subset(np.arange(16)), loaded.tokenizer, cfg.data.max_length)
    others = tokenize(labelled.subset(np.arange(16, 48)), loaded.tokenizer, cfg.data.max_length)
    _train(loaded.model, members, Task.CLASSIFICATION, explicit, steps=25, lr=3e-3)
    got = {name: example_scores(loaded.model, d, Task.CLASSIFICATION, explicit) for name, d in
           (("in", members), ("out", others))}
    assert set(got["in"]) == {ScoreKind.LOSS}
    assert attack_metrics(ScoreKind.LOSS, got["in"][ScoreKind.LOSS], got["out"][ScoreKind.LOSS]).auc > 0.8
