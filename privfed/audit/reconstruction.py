"""Reconstruction from one upload: what an honest-but-curious server learns about a client's data from the vector
it receives, without any optimisation — two closed-form observations.

* **Token set** (full and pretrain regimes; the observation behind DAGER and FILM): a row of the input-embedding
  matrix ``[V, d]`` gets a gradient only if its token was fed to the model, so the rows that moved name the
  client's vocabulary. (There is no weight decay here, which would move every row.) An untied output layer
  (``lm_head``) is no help: the softmax gives every one of its rows a gradient. A model that *ties* the two
  matrices therefore moves every embedding row and the attack degrades to "every token".
* **Label histogram** (classifiers, e.g. the LoRA demo whose head trains fully): softmax cross-entropy's bias
  gradient is ``mean(p - onehot(y))``, so the head-bias update ranks the labels by frequency minus predicted mass.

Both leak properties of the client's *whole shard*, not of one record. DP-SGD bounds what one record changes, so
it does not hide a client's vocabulary or label mix: its noise moves every embedding row (which does break the
token-set read-out here, though not by design) and the label skew survives it on average. Only the sum over many
clients (secure aggregation; what the server gets then mixes everyone's data) or user-level DP hides them.

What the server can read from an upload (:class:`~privfed.federation.server_view.ServerView`) depends on the
aggregation: a plain contribution ``[w * delta, w]`` (floats), masked words under secagg (uniformly random
integers: a curious server can run the attack on them, and learns nothing), Paillier ciphertexts (nothing to read
at all: the result says ``readable=False`` and carries the guessing baseline).
"""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

EMBEDDING_NAMES = ("embed_tokens", "word_embeddings", "wte", "embed_in")  # LLaMA/Mistral, BERT, GPT-2, GPT-NeoX
HEAD_NAMES = ("classifier", "score", "classification_head")  # BERT/RoBERTa, decoder LMs, BART
ROW_TOLERANCE = 1e-7  # a row "changed" when its update norm exceeds this times the largest row's norm


@dataclass(frozen=True)
class VectorLayout:
    """Where each trainable tensor sits in the flat vector that travels (``privfed.federation.vectors``): the
    tensors of ``trainable_parameters(model)``, concatenated in that order, each flattened row-major."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_parameters(cls, named: Sequence[tuple[str, torch.Tensor]]) -> VectorLayout:
        """From ``trainable_parameters(model)``, or ``zip(fed.trainable_names, fed.runtime.params)``."""
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def slice_of(self, name: str) -> slice:
        """The entries of tensor ``name`` in the vector (KeyError if it does not travel)."""
        offset = 0
        for n, shape in zip(self.names, self.shapes, strict=True):
            if n == name:
                return slice(offset, offset + math.prod(shape))
            offset += math.prod(shape)
        raise KeyError(f"{name} is not a trainable tensor of this layout")

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.names.index(name)]

    def tensor(self, vector: np.ndarray, name: str) -> np.ndarray:
        """Tensor ``name`` cut out of ``vector`` in its own shape."""
        if vector.shape != (self.size,):
            raise ValueError(f"vector has shape {vector.shape}, the layout holds {self.size} values")
        return vector[self.slice_of(name)].reshape(self.shape_of(name))

    def find(self, *fragments: str) -> str | None:
        """The first tensor whose dotted name has one of ``fragments`` as a component, or None."""
        for name in self.names:
            if set(name.split(".")) & set(fragments):
                return name
        return None


def embedding_tensor_name(layout: VectorLayout) -> str | None:
    """The input-embedding matrix ``[V, d]`` in the vector, or None when it does not travel (lora and prompt
    regimes: then the token-set attack has nothing to read). Found by name (``embed_tokens``, ``word_embeddings``,
    ``wte``, ``embed_in``); the output layer (``lm_head``) is never chosen: its rows all move through the softmax,
    whatever the tokens."""
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        parts = name.split(".")
        if parts[-1] == "weight" and len(shape) == 2 and set(parts) & set(EMBEDDING_NAMES):
            return name
    return None


def head_bias_name(layout: VectorLayout) -> str | None:
    """The bias of the classification head's last layer, or None (no head bias travels: a causal LM, or a head
    without bias, like LLaMA's ``score``). Under LoRA privfed trains the head directly, e.g. BERT's
    ``base_model.model.classifier.bias``; a peft ``modules_to_save`` copy would be found the same way."""
    found = None
    for name in layout.names:
        parts = name.split(".")
        if parts[-1] == "bias" and set(parts) & set(HEAD_NAMES) and "original_module" not in parts:
            found = name  # the last one: a two-layer head's output layer
    return found


def embeddings_tied(model: nn.Module) -> bool:
    """Whether the output layer shares the input embedding (GPT-2, many small LMs; not privfed's tiny_llama).

    Then every row of the shared matrix gets a gradient through the output softmax, every row moves, and the
    token-set attack can only answer "every token". Only one copy travels (``named_parameters`` lists it once).
    """
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    return inputs is not None and outputs is not None and inputs.weight is outputs.weight


class TokenScope(enum.Enum):
    """Which tokens of a client's examples count as the truth of the token-set attack."""

    ATTENDED = "attended"  # every token with attention_mask 1: all an encoder classifier's loss depends on
    BEFORE_TARGET = "before_target"  # tokens before a scored target: all a causal LM's loss depends on


def tokens_in(data: TensorDataset, scope: TokenScope = TokenScope.ATTENDED) -> set[int]:
    """The token ids of ``data`` (privfed's ``input_ids, attention_mask, labels, loss_mask``) in ``scope``.

    Over a client's shard this is an upper bound of what its Poisson batches touched in a round. A causal LM
    scores target ``t + 1`` from positions ``<= t``: a token after the last scored target (a text's final
    ``[SEP]``, a chat's closing user turn) influences nothing and its embedding row gets no gradient, so
    ``BEFORE_TARGET`` is the causal LM's exact truth when every example is in the batch.
    """
    input_ids, attention_mask, _labels, loss_mask = data.tensors[:4]
    if scope is TokenScope.ATTENDED:
        keep = attention_mask.bool()
    else:
        scored_later = loss_mask[:, 1:].flip(1).cummax(dim=1).values.flip(1).bool()  # some target s > t scored
        keep = attention_mask[:, :-1].bool() & scored_later
        input_ids = input_ids[:, :-1]
    return set(input_ids[keep].tolist())


def labels_histogram(data: TensorDataset, num_labels: int) -> np.ndarray:
    """The share of each label among ``data``'s examples (sums to 1): a client's label mix over its shard."""
    counts = np.bincount(data.tensors[2].numpy(), minlength=num_labels).astype(np.float64)
    return counts / counts.sum()


def changed_rows(matrix: np.ndarray, rtol: float = ROW_TOLERANCE) -> np.ndarray:
    """Indices of the rows whose L2 norm exceeds ``rtol`` times the largest row norm (none when nothing moved).

    Without DP an absent token's row is exactly unchanged (SGD and Adam alike: Adam's step is 0 where the
    gradient has always been 0), so any tolerance above float rounding separates them; relative, so that the
    scale of the update (learning rate, FedAvg weight) does not matter.
    """
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    top = norms.max(initial=0.0)
    return np.flatnonzero(norms > rtol * top) if top > 0 else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class TokenSetResult:
    """The predicted token set against the true one. ``readable`` False: the server could read no floats, and the
    result is the guess "every token" (whose F1, ``guess_f1``, is what any reading must beat)."""

    precision: float
    recall: float
    f1: float
    predicted: int  # tokens predicted
    actual: int  # tokens in the truth
    vocab_size: int
    readable: bool

    @property
    def guess_f1(self) -> float:
        """F1 of predicting every token: precision p = actual / V, recall 1, F1 = 2p / (1 + p)."""
        p = self.actual / self.vocab_size
        return 2 * p / (1 + p)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _score(predicted: set[int], actual: set[int], vocab_size: int, readable: bool) -> TokenSetResult:
    hits = len(predicted & actual)
    precision, recall = _ratio(hits, len(predicted)), _ratio(hits, len(actual))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return TokenSetResult(precision, recall, f1, len(predicted), len(actual), vocab_size, readable)


def token_set_attack(update: np.ndarray | None, layout: VectorLayout, actual: set[int],
                     rtol: float = ROW_TOLERANCE) -> TokenSetResult:
    """Predict the client's token set as the embedding rows its update moved; score it against ``actual``.

    ``update``: the vector as the server reads it (:func:`readable_update`), None when it reads nothing
    (Paillier: the guess "every token"). DP-SGD protects records, not a client's vocabulary: its noise moves
    every row, which happens to reduce this read-out to the guess, but a client's vocabulary is a property of its
    whole shard that record-level DP does not bound; only the sum over many clients or user-level DP hides it.
    Raises ValueError when no input embedding travels (lora and prompt regimes).
    """
    name = embedding_tensor_name(layout)
    if name is None:
        raise ValueError("no input embedding among the trainable tensors (lora or prompt regime): nothing to read")
    vocab_size = layout.shape_of(name)[0]
    if update is None:
        return _score(set(range(vocab_size)), actual, vocab_size, readable=False)
    rows = changed_rows(layout.tensor(update, name), rtol)
    return _score(set(rows.tolist()), actual, vocab_size, readable=True)


@dataclass(frozen=True)
class LabelHistogramResult:
    """The estimated label mix against the client's: total-variation distance, and that of guessing the uniform
    mix (``uniform_tv``), the baseline an attack must beat. ``readable`` False: nothing readable, the estimate is
    the uniform guess."""

    tv_distance: float
    uniform_tv: float
    estimate: tuple[float, ...]
    readable: bool

    @property
    def beats_guessing(self) -> bool:
        return self.tv_distance < self.uniform_tv


def estimate_histogram(bias_update: np.ndarray) -> np.ndarray:
    """The label mix estimated from the head-bias update ``Δb``: ``ĥ = (Δb - min Δb) / Σ(Δb - min Δb)``.

    SGD: ``Δb = -lr Σ_steps mean(p - onehot(y))``, proportional to ``h - p̄`` (label share minus predicted mass;
    ``p̄`` is near uniform for a fresh head), and sums to 0. Setting the rarest label to 0 and normalising fixes
    the unknown scale: ``ĥ = 1/K + Δb / (K |min Δb|)``, exact when ``p̄`` is uniform and the rarest label absent.
    Adam's first step is ``lr·sign(h - p̄)``: ĥ is then uniform over the over-represented labels, still the ranking
    that matters. Scale- and shift-free, so the learning rate and FedAvg weight drop out. An update that moves no
    label apart from the others gives the uniform guess.
    """
    shifted = bias_update.astype(np.float64) - bias_update.min()
    total = shifted.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(bias_update.size, 1.0 / bias_update.size)
    return shifted / total


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


def label_histogram_attack(update: np.ndarray | None, layout: VectorLayout, actual: np.ndarray
                           ) -> LabelHistogramResult:
    """Estimate the client's label mix from its head-bias update (:func:`estimate_histogram`) and compare it with
    ``actual`` (:func:`labels_histogram`: its shard's mix) by total-variation distance.

    ``update`` None (Paillier: nothing readable): the estimate is the uniform guess. DP-SGD protects records, not
    a client's label mix: the skew is in every example, so clipping and noise shrink it but do not remove it, and
    enough steps reveal it; only the sum over many clients or user-level DP hides it. Raises ValueError when no
    head bias travels.
    """
    name = head_bias_name(layout)
    if name is None:
        raise ValueError("no classification-head bias among the trainable tensors: nothing to read labels from")
    truth = np.asarray(actual, dtype=np.float64) / np.sum(actual)
    uniform = np.full(truth.size, 1.0 / truth.size)
    if truth.size != layout.shape_of(name)[0]:
        raise ValueError(f"{truth.size} labels in the truth, the head {name} has {layout.shape_of(name)[0]}")
    readable = update is not None
    estimate = estimate_histogram(layout.tensor(update, name)) if readable else uniform
    return LabelHistogramResult(total_variation(estimate, truth), total_variation(uniform, truth),
                                tuple(float(x) for x in estimate), readable)


class UploadKind(enum.Enum):
    """What a :class:`~privfed.federation.server_view.ServerView` upload holds, told apart by its dtype."""

    PLAIN = "plain"  # float32 contribution [w * delta, w]
    MASKED = "masked"  # secagg: unsigned words, the encoded contribution plus pairwise masks
    CIPHERTEXTS = "ciphertexts"  # paillier: Python ints (object array), packed several values each


def upload_kind(upload: np.ndarray) -> UploadKind:
    if upload.dtype == object:
        return UploadKind.CIPHERTEXTS
    if np.issubdtype(upload.dtype, np.integer):
        return UploadKind.MASKED
    if np.issubdtype(upload.dtype, np.floating):
        return UploadKind.PLAIN
    raise ValueError(f"an upload of dtype {upload.dtype} is none of plain floats, masked words or ciphertexts")


def readable_update(upload: np.ndarray, n: int) -> np.ndarray | None:
    """The float vector of length ``n`` (the trainable vector's) that a curious server reads from one upload.

    Plain: the contribution's first ``n`` entries divided by its weight (last entry): the client's update.
    Secagg: the masked words cast to float — uniformly random numbers, carrying nothing of the update; a
    curious server can still run the attacks on them, and they answer "every row moved" and a random mix. (With
    ``aggregation.rotation`` the masked vector is longer, padded to a power of two: its first ``n`` words.)
    Paillier: None, ciphertexts are no floats; an attack can only guess.
    """
    kind = upload_kind(upload)
    if kind is UploadKind.CIPHERTEXTS:
        return None
    rotated = kind is UploadKind.MASKED and upload.ndim == 1 and upload.size > n + 1  # padded to a power of two
    if upload.shape != (n + 1,) and not rotated:
        raise ValueError(f"a {kind.value} upload has shape {upload.shape}, a contribution of {n} values has {n + 1}")
    if kind is UploadKind.MASKED:
        return upload[:n].astype(np.float64)
    return mean_update(upload)


def mean_update(total: np.ndarray) -> np.ndarray:
    """``total[:-1] / total[-1]``: a plain contribution's update, or from the aggregation outcome's sum the
    weighted mean update, which mixes every contributor's tokens and labels (compared against one client's
    truth, it shows what aggregation hides)."""
    weight = float(total[-1])
    if weight == 0:
        raise ValueError("a contribution of weight 0 carries no update")
    return total[:-1].astype(np.float64) / weight
