"""Canary exposure: secret formats, the exact rank-based exposure and the skew-normal estimate, candidate scoring
that agrees with privfed's training loss, and measure_exposure end to end on a tiny LLaMA with 4-digit secrets.
The LLaMA trained on inserted secrets is also the causal-LM positive control of membership inference."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.stats import skewnorm
from transformers import PreTrainedTokenizerBase

from privfed.audit.exposure import (
    ExposureMethod,
    SecretFormat,
    draw_secrets,
    exposure_exact,
    exposure_skew_normal,
    measure_exposure,
    sequence_log_perplexities,
)
from privfed.audit.membership import ScoreKind, attack_metrics, example_scores
from privfed.config import Task
from privfed.data.records import TextDataset
from privfed.data.tokenize import NO_EXPLICIT_INPUTS, as_batch, tokenize
from privfed.models.losses import loss_from_logits, model_inputs, per_example_loss, token_counts
from privfed.models.sources import LoadedModel, load_model

MAX_LENGTH = 16


def _tiny_llama(seed: int) -> LoadedModel:
    from conftest import TINY_CAUSAL, make_config

    return load_model(make_config(TINY_CAUSAL).model, Task.CAUSAL_LM, 1, random_init=True, seed=seed)


@pytest.fixture(scope="module")
def random_llama() -> LoadedModel:
    return _tiny_llama(21)


# ---- formats ----


def test_secret_format_renders_fixed_width_numbers():
    fmt = SecretFormat()
    assert fmt.space_size() == 10 ** 6
    assert fmt.render(281828) == "my record number is 281828"
    assert SecretFormat("pin ", 4).render(7) == "pin 0007"
    for bad in (-1, 10 ** 6):
        with pytest.raises(ValueError):
            fmt.render(bad)
    with pytest.raises(ValueError):
        SecretFormat(digits=0)


def test_draw_secrets_are_distinct_reproducible_and_in_range():
    fmt = SecretFormat(digits=2)
    drawn = draw_secrets(fmt, 100, np.random.default_rng(0))
    assert sorted(drawn) == list(range(100))  # all of them, each once
    big = SecretFormat(digits=12)
    assert draw_secrets(big, 5, np.random.default_rng(1)) == draw_secrets(big, 5, np.random.default_rng(1))
    assert all(isinstance(n, int) and 0 <= n < 10 ** 12 for n in draw_secrets(big, 5, np.random.default_rng(1)))
    with pytest.raises(ValueError):
        draw_secrets(fmt, 101, np.random.default_rng(0))


# ---- exposure from ranks and from a skew-normal ----


def test_exact_exposure_of_the_first_and_last_rank():
    values = np.random.default_rng(0).permutation(10 ** 4).astype(float)
    assert exposure_exact(0.0, values) == pytest.approx(math.log2(10 ** 4))  # 13.29 bits
    assert exposure_exact(9999.0, values) == 0.0
    assert exposure_exact(1.0, np.ones(50)) == 0.0  # ties count against the secret
    with pytest.raises(ValueError, match="not among"):
        exposure_exact(-1.0, values)


def test_exact_exposure_of_a_uniformly_ranked_secret_averages_one_over_ln_2():
    values = np.random.default_rng(1).normal(size=2000)
    mean = np.mean([exposure_exact(v, values) for v in values])  # every rank once
    assert mean == pytest.approx(1 / math.log(2), abs=0.01)


@pytest.mark.parametrize("shape", [-4.0, 0.0, 4.0])
def test_skew_normal_exposure_at_the_one_in_a_thousand_quantile_is_ten_bits(shape):
    sample = skewnorm.rvs(shape, loc=30.0, scale=4.0, size=20_000, random_state=np.random.default_rng(3))
    value = float(skewnorm.ppf(1e-3, shape, loc=30.0, scale=4.0))
    assert exposure_skew_normal(value, sample) == pytest.approx(math.log2(1000), abs=0.5)
    assert exposure_skew_normal(float(np.max(sample)) + 10, sample) == pytest.approx(0.0, abs=1e-3)


# ---- scoring candidates ----


class OpaqueWrapper(torch.nn.Module):
    """Hides the network's ``logits_to_keep`` argument (as an Opacus wrapper would): every logit is computed."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, **inputs):
        assert "logits_to_keep" not in inputs
        return self.inner(**inputs)


@pytest.mark.parametrize("wrapped", [False, True])
def test_log_perplexities_are_privfeds_loss_summed_over_tokens(random_llama, wrapped):
    fmt = SecretFormat(digits=4)
    texts = [fmt.render(n) for n in (0, 7, 1234, 2001, 9999, 5050)] + ["hello there", "what is your name?"]
    module = OpaqueWrapper(random_llama.model) if wrapped else random_llama.model
    got = sequence_log_perplexities(module, random_llama.tokenizer, texts, MAX_LENGTH, NO_EXPLICIT_INPUTS,
                                    batch_size=3)
    data = tokenize(TextDataset(tuple(texts), None, ("",) * len(texts)), random_llama.tokenizer, MAX_LENGTH)
    batch = as_batch(data.tensors)
    random_llama.model.eval()
    with torch.no_grad():
        logits = random_llama.model(**model_inputs(batch)).logits
    random_llama.model.train()
    expected = loss_from_logits(logits, batch, Task.CAUSAL_LM) * token_counts(batch, Task.CAUSAL_LM)
    assert got == pytest.approx(expected.double().numpy(), rel=1e-5)
    assert random_llama.model.training
    with pytest.raises(ValueError, match="more than max_length=4"):
        sequence_log_perplexities(random_llama.model, random_llama.tokenizer, texts, 4, NO_EXPLICIT_INPUTS)


# ---- end to end ----


@dataclass(frozen=True)
class Memorised:
    """tiny_llama trained on the first 6 of 12 four-digit secrets (20 full-batch Adam steps); the rest are
    controls."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    fmt: SecretFormat
    numbers: list[int]
    inserted: int = 6


@pytest.fixture(scope="module")
def memorised() -> Memorised:
    loaded = _tiny_llama(22)
    fmt = SecretFormat(digits=4)
    numbers = draw_secrets(fmt, 12, np.random.default_rng(4))
    inserted = TextDataset(tuple(fmt.render(n) for n in numbers[:6]), None, ("",) * 6)
    batch = as_batch(tokenize(inserted, loaded.tokenizer, MAX_LENGTH).tensors)
    optimizer = torch.optim.Adam(loaded.model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        per_example_loss(loaded.model, batch, Task.CAUSAL_LM).mean().backward()
        optimizer.step()
    return Memorised(loaded.model, loaded.tokenizer, fmt, numbers)


def test_inserted_secrets_are_exposed_and_controls_are_not(memorised):
    """Exact exposure over all 10^4 candidates: the inserted secrets rank near the top; the controls stay in
    [0, log2 |R|] around the 1.44-bit mean of a random secret."""
    secrets = {n: (1 if i < memorised.inserted else 0) for i, n in enumerate(memorised.numbers)}
    found = measure_exposure(memorised.model, memorised.tokenizer, memorised.fmt, secrets, MAX_LENGTH,
                             NO_EXPLICIT_INPUTS, rng=np.random.default_rng(5))
    assert [e.number for e in found] == memorised.numbers and [e.insertions for e in found] == list(secrets.values())
    assert all(e.method is ExposureMethod.EXACT for e in found)
    assert all(0.0 <= e.exposure <= math.log2(10 ** 4) for e in found)
    controls = [e.exposure for e in found if e.insertions == 0]
    exposed = [e.exposure for e in found if e.insertions == 1]
    assert min(exposed) > 6.0 and np.mean(controls) < 4.0
    assert memorised.model.training


def test_membership_positive_control_every_score_tells_the_inserted_secrets_from_the_controls(memorised):
    """The causal-LM positive control of test_audit_membership.py: members are the 6 inserted records, non-members
    the 6 never-inserted ones of the same format; all four scores must separate them (AUC > 0.8)."""
    texts = [memorised.fmt.render(n) for n in memorised.numbers]
    scores = {}
    for name, part in (("in", texts[:memorised.inserted]), ("out", texts[memorised.inserted:])):
        data = tokenize(TextDataset(tuple(part), None, ("",) * len(part)), memorised.tokenizer, MAX_LENGTH)
        scores[name] = example_scores(memorised.model, data, Task.CAUSAL_LM, NO_EXPLICIT_INPUTS, texts=part)
    for kind in ScoreKind:
        assert attack_metrics(kind, scores["in"][kind], scores["out"][kind]).auc > 0.8, kind


def test_skew_normal_path_above_the_exact_limit(random_llama):
    fmt = SecretFormat(digits=4)
    numbers = draw_secrets(fmt, 4, np.random.default_rng(6))
    found = measure_exposure(random_llama.model, random_llama.tokenizer, fmt, dict.fromkeys(numbers, 0),
                             MAX_LENGTH, NO_EXPLICIT_INPUTS, rng=np.random.default_rng(7), exact_limit=1000,
                             sample_size=400)
    assert all(e.method is ExposureMethod.SKEW_NORMAL for e in found)
    assert all(math.isfinite(e.exposure) and 0.0 <= e.exposure <= math.log2(10 ** 4) for e in found)

