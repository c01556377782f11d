"""Reconstruction from one upload: the token set from embedding rows, the label mix from the head bias, and what
the server can read under plain, secagg and paillier aggregation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from transformers import LlamaConfig, LlamaForCausalLM

import privfed
from privfed.audit.reconstruction import (
    TokenScope,
    UploadKind,
    VectorLayout,
    embedding_tensor_name,
    embeddings_tied,
    estimate_histogram,
    head_bias_name,
    label_histogram_attack,
    labels_histogram,
    mean_update,
    readable_update,
    token_set_attack,
    tokens_in,
    total_variation,
    upload_kind,
)
from privfed.client.state import ClientState
from privfed.config import Task
from privfed.data.tokenize import as_batch
from privfed.federation.setup import Federation, build_federation
from privfed.federation.vectors import flatten
from privfed.models.losses import per_example_loss
from privfed.models.regimes import trainable_parameters
from privfed.client.procedure import contribution

# one plain SGD step over a client's whole shard (batch larger than every shard)
ONE_STEP = ("model.regime=full", "partition.scheme=iid", "data.max_examples=40", "training.local_steps=1",
            "training.batch_size=64", "training.optimizer=sgd", "training.lr=0.5")


def _layout(fed: Federation) -> VectorLayout:
    return VectorLayout.from_parameters(list(zip(fed.trainable_names, fed.runtime.params, strict=True)))


def _plain_round(fed: Federation, clients: list[ClientState]) -> tuple[privfed.ServerView, np.ndarray]:
    """Train ``clients`` from the initial state, aggregate their contributions in plain: (the view, the sum)."""
    updates = {c.id: fed.runtime.train(c, fed.shard(c), 1, fed.initial_vector, []).update for c in clients}
    cap = max(c.num_examples for c in clients)
    inputs = {c: contribution(fed.config, u.delta, u.num_examples, cap) for c, u in updates.items()}
    view = privfed.ServerView()
    cfg = privfed.AggregationConfig(method=privfed.Aggregation.PLAIN)
    with privfed.make_aggregator(cfg, num_clients=len(inputs), vector_length=fed.num_trainable + 1) as agg:
        outcome = agg.aggregate(1, inputs, view=view)
    return view, outcome.total


@dataclass(frozen=True)
class CausalRound:
    fed: Federation
    layout: VectorLayout
    view: privfed.ServerView
    total: np.ndarray


@pytest.fixture(scope="module")
def causal_round() -> CausalRound:
    """tiny_llama, full regime: clients 0 and 1 take one plain SGD step each; the server sees both uploads."""
    from conftest import TINY_CAUSAL, make_config

    fed = build_federation(make_config(TINY_CAUSAL, *ONE_STEP))
    view, total = _plain_round(fed, fed.clients[:2])
    return CausalRound(fed, _layout(fed), view, total)


# ---- the vector layout ----

def test_layout_cuts_each_tensor_out_of_the_flat_vector():
    named = [("a.weight", torch.zeros(2, 3)), ("b.embed_tokens.weight", torch.zeros(4, 2)), ("c.bias", torch.zeros(5))]
    layout = VectorLayout.from_parameters(named)
    vector = np.arange(layout.size, dtype=np.float32)
    assert layout.size == 19 and layout.slice_of("c.bias") == slice(14, 19)
    np.testing.assert_array_equal(layout.tensor(vector, "b.embed_tokens.weight"), np.arange(6, 14).reshape(4, 2))
    assert embedding_tensor_name(layout) == "b.embed_tokens.weight" and head_bias_name(layout) is None
    assert layout.find("embed") is None and layout.find("x", "c") == "c.bias"  # whole name components only
    with pytest.raises(KeyError):
        layout.slice_of("missing")
    with pytest.raises(ValueError, match="19 values"):
        layout.tensor(vector[:-1], "c.bias")


def test_tiny_llama_embedding_is_found_and_untied(causal_round):
    assert embedding_tensor_name(causal_round.layout) == "model.embed_tokens.weight"
    assert "lm_head.weight" in causal_round.layout.names  # travels too, but every row of it moves
    assert not embeddings_tied(causal_round.fed.runtime.model)


# ---- token set ----

def test_token_set_from_zero_rows_is_exact_and_noise_reduces_it_to_guessing():
    vocab, dim = 200, 8
    layout = VectorLayout.from_parameters([("model.embed_tokens.weight", torch.zeros(vocab, dim)),
                                           ("lm_head.weight", torch.zeros(vocab, dim))])
    rng = np.random.default_rng(0)
    actual = {3, 17, 42, 199}
    update = np.zeros(layout.size)
    rows = layout.tensor(update, "model.embed_tokens.weight")  # a view: writes go into update
    rows[sorted(actual)] = rng.normal(0, 1e-4, (len(actual), dim))
    update[layout.slice_of("lm_head.weight")] = rng.normal(0, 1.0, vocab * dim)  # the softmax moves every row
    exact = token_set_attack(update, layout, actual)
    assert (exact.precision, exact.recall, exact.f1, exact.predicted, exact.readable) == (1.0, 1.0, 1.0, 4, True)

    noisy = token_set_attack(update + rng.normal(0, 1e-3, layout.size), layout, actual)
    p = len(actual) / vocab
    assert noisy.predicted == vocab and noisy.recall == 1.0
    assert noisy.f1 == pytest.approx(2 * p / (1 + p)) == pytest.approx(noisy.guess_f1)


def test_one_plain_step_reveals_the_clients_token_set(causal_round):
    fed, layout = causal_round.fed, causal_round.layout
    shard = fed.shard(fed.clients[0])
    update = readable_update(causal_round.view.uploads[0], fed.num_trainable)
    exact = token_set_attack(update, layout, tokens_in(shard, TokenScope.BEFORE_TARGET))
    assert exact.f1 == 1.0 and exact.predicted > 20
    # a causal LM's final token ([SEP] here) is scored by nothing: its row stays put, and it is all the attack misses
    attended = tokens_in(shard)
    assert attended - tokens_in(shard, TokenScope.BEFORE_TARGET) == {fed.tokenizer.sep_token_id}
    assert token_set_attack(update, layout, attended).precision == 1.0


def test_the_sum_reveals_the_union_of_its_clients_tokens(causal_round):
    fed = causal_round.fed
    truths = [tokens_in(fed.shard(c), TokenScope.BEFORE_TARGET) for c in fed.clients[:2]]
    mixed = token_set_attack(mean_update(causal_round.total), causal_round.layout, truths[0])
    assert truths[1] - truths[0]  # otherwise the sum could not be told from client 0's own update
    assert mixed.recall == 1.0 and mixed.predicted == len(truths[0] | truths[1]) and mixed.precision < 1.0


def test_dp_noise_moves_every_row():
    from conftest import TINY_CAUSAL, make_config

    fed = build_federation(make_config(TINY_CAUSAL, *ONE_STEP, "training.batch_size=4", "privacy.mode=fixed_noise",
                                       "privacy.noise_multiplier=1.0"))
    client = fed.clients[0]
    delta = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, []).update.delta
    result = token_set_attack(delta, _layout(fed), tokens_in(fed.shard(client), TokenScope.BEFORE_TARGET))
    assert result.predicted == result.vocab_size == 30522 and result.recall == 1.0
    assert result.f1 == pytest.approx(result.guess_f1)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_tied_embeddings_move_every_row(tied):
    """Tying puts the output softmax's gradient, non-zero for every token, on the input embedding's rows."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied))
    named = trainable_parameters(model)
    layout = VectorLayout.from_parameters(named)
    assert embeddings_tied(model) is tied and ("lm_head.weight" in layout.names) is not tied
    ids = torch.tensor([[1, 5, 9, 5, 7, 0], [1, 11, 13, 2, 0, 0]])
    mask = (ids > 0).long()
    data = TensorDataset(ids, mask, torch.zeros(2, dtype=torch.long), mask)
    before = flatten([p for _, p in named])
    per_example_loss(model, as_batch(data.tensors), Task.CAUSAL_LM).mean().backward()
    torch.optim.SGD([p for _, p in named], lr=0.1).step()
    result = token_set_attack(flatten([p for _, p in named]) - before, layout, tokens_in(data, TokenScope.BEFORE_TARGET))
    assert result.actual == 5  # 1, 5, 9, 11, 13: the final 7 and 2 are scored by nothing
    if tied:
        assert result.predicted == 50 and result.f1 == pytest.approx(result.guess_f1)
    else:
        assert result.f1 == 1.0


def test_nothing_readable_is_the_every_token_guess(causal_round):
    result = token_set_attack(None, causal_round.layout, {1, 2, 3})
    assert not result.readable and result.predicted == 30522 and result.f1 == pytest.approx(result.guess_f1)


def test_masked_words_read_as_every_token(causal_round):
    n = causal_round.fed.num_trainable
    words = np.random.default_rng(0).integers(0, 2**32, n + 1, dtype=np.uint64).astype(np.uint32)
    result = token_set_attack(readable_update(words, n), causal_round.layout, {1, 2, 3})
    assert result.readable and result.predicted == result.vocab_size


# ---- label histogram ----

def _skewed_classifier(optimizer: str, lr: float) -> tuple[Federation, ClientState]:
    """tiny_bert, LoRA with its head training fully, and a client holding 16 examples of label 0 and one of each
    other label: 80 % one class."""
    from conftest import TINY_CLASSIFIER, make_config

    fed = build_federation(make_config(TINY_CLASSIFIER, "model.regime=lora", "partition.scheme=iid",
                                       "data.max_examples=120", "training.local_steps=3", "training.batch_size=32",
                                       f"training.optimizer={optimizer}", f"training.lr={lr}"))
    labels = fed.pool.tensors[2].numpy()
    shard = np.concatenate([np.flatnonzero(labels == 0)[:16]] + [np.flatnonzero(labels == k)[:1] for k in range(1, 5)])
    return fed, ClientState(0, shard, 1.0, None)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.5), ("adam", 0.01)])
def test_a_skewed_label_mix_leaks_from_the_head_bias(optimizer, lr):
    fed, client = _skewed_classifier(optimizer, lr)
    layout = _layout(fed)
    assert head_bias_name(layout) == "base_model.model.classifier.bias" and embedding_tensor_name(layout) is None
    view, _ = _plain_round(fed, [client])
    truth = labels_histogram(fed.shard(client), len(fed.label_names))
    np.testing.assert_allclose(truth, [0.8, 0.05, 0.05, 0.05, 0.05])
    result = label_histogram_attack(readable_update(view.uploads[0], fed.num_trainable), layout, truth)
    assert result.readable and result.uniform_tv == pytest.approx(0.6)
    assert result.tv_distance < 0.25 and result.estimate.index(max(result.estimate)) == 0
    with pytest.raises(ValueError, match="no input embedding"):
        token_set_attack(None, layout, set())


def test_masked_words_guess_the_label_mix_no_better_than_uniform():
    """Masked words are uniformly random: over many masks, the estimate is on average no closer than uniform."""
    layout = VectorLayout.from_parameters([("classifier.weight", torch.zeros(5, 4)), ("classifier.bias", torch.zeros(5))])
    truth = np.array([0.8, 0.05, 0.05, 0.05, 0.05])
    rng = np.random.default_rng(1)
    results = [label_histogram_attack(readable_update(rng.integers(0, 2**32, layout.size + 1, dtype=np.uint64)
                                                      .astype(np.uint32), layout.size), layout, truth)
               for _ in range(300)]
    assert np.mean([r.tv_distance for r in results]) >= results[0].uniform_tv
    unreadable = label_histogram_attack(None, layout, truth)
    assert not unreadable.readable and unreadable.estimate == (0.2,) * 5
    assert unreadable.tv_distance == unreadable.uniform_tv and not unreadable.beats_guessing


def test_the_histogram_estimator_is_scale_and_shift_free():
    h = np.array([0.5, 0.3, 0.2, 0.0])
    sgd_like = 0.1 * (h - 0.25)  # lr (h - p̄), p̄ uniform
    np.testing.assert_allclose(estimate_histogram(sgd_like), h)
    np.testing.assert_allclose(estimate_histogram(7 * sgd_like + 3), h)
    np.testing.assert_allclose(estimate_histogram(np.zeros(4)), 0.25)
    assert total_variation(estimate_histogram(np.sign(h - 0.25)), h) < total_variation(np.full(4, 0.25), h)


# ---- what the server reads ----

def test_readable_update_per_aggregation_kind():
    n = 6
    delta = np.linspace(-0.5, 0.5, n)
    inputs = {0: np.append(0.5 * delta, 0.5), 1: np.append(0.25 * delta, 0.25)}
    uploads = {}
    for method in (privfed.Aggregation.PLAIN, privfed.Aggregation.SECAGG):
        view = privfed.ServerView()
        with privfed.make_aggregator(privfed.AggregationConfig(method=method), num_clients=2,
                                     vector_length=n + 1) as agg:
            agg.aggregate(1, inputs, view=view)
        uploads[method] = view.uploads[0]
    assert upload_kind(uploads[privfed.Aggregation.PLAIN]) is UploadKind.PLAIN
    np.testing.assert_allclose(readable_update(uploads[privfed.Aggregation.PLAIN], n), delta, rtol=1e-6)
    masked = uploads[privfed.Aggregation.SECAGG]
    assert upload_kind(masked) is UploadKind.MASKED
    np.testing.assert_array_equal(readable_update(masked, n), masked[:n].astype(np.float64))
    ciphertexts = np.array([3**300, 5**400], dtype=object)  # Paillier: big Python ints, several values packed in each
    assert upload_kind(ciphertexts) is UploadKind.CIPHERTEXTS and readable_update(ciphertexts, n) is None
    with pytest.raises(ValueError, match="contribution of 6 values"):
        readable_update(uploads[privfed.Aggregation.PLAIN][:-1], n)
    np.testing.assert_allclose(mean_update(inputs[0] + inputs[1]), delta)
