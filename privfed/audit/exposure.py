"""Canary exposure (Carlini et al. 2019, "The Secret Sharer"): how much more likely a trained model finds a
secret it saw than the other secrets it could have seen.

A secret has a fixed format, e.g. ``"my record number is 281828"``: a prefix and ``d`` random digits, so there
are ``|R| = 10^d`` candidates. Ranking every candidate by the model's log-perplexity (its total NLL; rank 1 = the
most likely), ``exposure = log2 |R| - log2 rank(secret)``: ``log2 |R|`` bits when the secret is the model's
favourite, 0 when it is the least likely. A secret that was never inserted is the control: its rank is uniform,
so its expected exposure is ``E[log2 |R| - log2 U] -> 1 / ln 2 ~ 1.44`` bits.

Up to ``exact_limit`` candidates every one is scored (once, shared by all secrets). Above that the paper's
estimate: fit a skew-normal to the log-perplexities of a random sample of candidates and take
``exposure ~ -log2 F(secret's log-perplexity)``, F the fitted CDF (the share of candidates the model prefers).
"""
from __future__ import annotations

import enum
import inspect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import skewnorm
from transformers import PreTrainedTokenizerBase

from privfed.audit.membership import evaluating, module_device
from privfed.data.records import TextDataset
from privfed.data.tokenize import ExplicitInputs, as_batch, tokenize
from privfed.models.losses import model_inputs


@dataclass(frozen=True)
class SecretFormat:
    """Secrets ``prefix`` + a ``digits``-digit number written with leading zeros."""

    prefix: str = "my record number is "
    digits: int = 6

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 18:  # 10^18 still fits numpy's int64 sampling
            raise ValueError(f"a secret needs 1 to 18 digits, not {self.digits}")

    def space_size(self) -> int:
        """``|R|``: how many different secrets the format can write."""
        return 10 ** self.digits

    def render(self, number: int) -> str:
        if not 0 <= number < self.space_size():
            raise ValueError(f"{number} is not a {self.digits}-digit secret")
        return f"{self.prefix}{number:0{self.digits}d}"


def draw_secrets(fmt: SecretFormat, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct secret numbers drawn uniformly from the format's space."""
    if not 0 <= count <= fmt.space_size():
        raise ValueError(f"cannot draw {count} distinct secrets from {fmt.space_size()}")
    return [int(n) for n in rng.choice(fmt.space_size(), size=count, replace=False)]


def sequence_log_perplexities(module: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                              max_length: int, explicit: ExplicitInputs, batch_size: int = 256) -> np.ndarray:
    """Each text's total NLL (nats) under the causal LM ``module``: the token scoring of
    :func:`privfed.models.losses.loss_from_logits` (target ``t`` scored when ``loss_mask[t]`` is 1, from the
    logits at ``t - 1``) summed rather than averaged, since log-perplexity ranks candidates that share a prefix
    and differ in a few tokens.

    Texts are tokenised by :func:`privfed.data.tokenize.tokenize`. Candidate secrets share almost every context,
    so each distinct context (token prefix) is run once and only its next-token distribution is computed
    (``logits_to_keep=1`` where the network takes it): for ``10^4`` four-digit secrets that is about 1.1 full-vocabulary
    softmaxes per text instead of one per token. Contexts of one length form a batch without padding (built by
    :func:`~privfed.data.tokenize.as_batch`), in eval mode without gradients. ValueError if a text needs more than
    ``max_length`` tokens (truncation would drop the very digits being ranked).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    contexts = _ContextTree()
    for start in range(0, len(texts), batch_size):
        chunk = tuple(texts[start:start + batch_size])
        data = tokenize(TextDataset(chunk, None, ("",) * len(chunk)), tokenizer, max_length)
        _check_untruncated(chunk, data.tensors[1], tokenizer, max_length)
        for ids, attention, scored in zip(data.tensors[0].tolist(), data.tensors[1].tolist(),
                                          data.tensors[3].tolist(), strict=True):
            n = sum(attention)
            contexts.add(ids[:n], scored[:n])
    pair_nll = _pair_nll(module, contexts, explicit, batch_size)
    totals = np.zeros(len(texts))
    np.add.at(totals, np.asarray(contexts.entry_text, dtype=np.int64), pair_nll[contexts.entry_pair])
    return totals


class _ContextTree:
    """The distinct (context, next token) pairs the texts' scored tokens need, as a prefix tree.

    Node ``k`` is a context (a token prefix), written as the first ``depth`` tokens of the text it came from;
    a pair is a node and the target token it predicts; an entry says that a text scores that pair.
    """

    def __init__(self) -> None:
        self.children: dict[tuple[int, int], int] = {}  # (parent node or -1, token) -> node
        self.node_ids: list[list[int]] = []  # a text's tokens; the node's context is the first node_depth of them
        self.node_depth: list[int] = []
        self.pairs: dict[tuple[int, int], int] = {}  # (node, target) -> pair
        self.entry_text: list[int] = []
        self.entry_pair: list[int] = []
        self.texts = 0

    def add(self, ids: list[int], scored: list[int]) -> None:
        """A text's tokens and its loss mask (both without padding)."""
        node = -1
        for t, token in enumerate(ids):
            if t > 0 and scored[t]:
                pair = self.pairs.setdefault((node, token), len(self.pairs))
                self.entry_text.append(self.texts)
                self.entry_pair.append(pair)
            node = self._child(node, token, ids, t + 1)
        self.texts += 1

    def _child(self, parent: int, token: int, ids: list[int], depth: int) -> int:
        key = (parent, token)
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = len(self.node_depth)
            self.node_ids.append(ids)
            self.node_depth.append(depth)
        return node


def _pair_nll(module: torch.nn.Module, contexts: _ContextTree, explicit: ExplicitInputs,
              batch_size: int) -> np.ndarray:
    """The NLL of each (context, target) pair: contexts of one depth run together, ``batch_size`` at a time."""
    pair_node = np.fromiter((node for node, _ in contexts.pairs), dtype=np.int64, count=len(contexts.pairs))
    pair_target = np.fromiter((tok for _, tok in contexts.pairs), dtype=np.int64, count=len(contexts.pairs))
    depth = np.asarray(contexts.node_depth, dtype=np.int64)
    nodes = np.unique(pair_node)
    nodes = nodes[np.argsort(depth[nodes], kind="stable")]  # the contexts to run, shallowest first
    position = np.empty(len(depth), dtype=np.int64)
    position[nodes] = np.arange(len(nodes))
    pairs = np.argsort(position[pair_node], kind="stable")  # pairs in the order their contexts run
    pair_position = position[pair_node[pairs]]
    nll = np.zeros(len(pair_node))
    device = module_device(module)
    keep_last = _takes_logits_to_keep(module)
    with evaluating(module):
        for lo, hi in _batches(depth[nodes], batch_size):
            logits = _next_token_logits(module, contexts, nodes[lo:hi], explicit, device, keep_last)
            a, b = np.searchsorted(pair_position, [lo, hi])
            rows = torch.as_tensor(pair_position[a:b] - lo, device=device)
            targets = torch.as_tensor(pair_target[pairs[a:b]], device=device)
            # -log softmax(logits)[target], without writing out the whole log-softmax
            pair_values = torch.logsumexp(logits, dim=-1)[rows] - logits[rows, targets]
            nll[pairs[a:b]] = pair_values.double().cpu().numpy()
    return nll


def _batches(depths: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans of at most ``batch_size`` consecutive equal ``depths`` (sorted) covering them all."""
    bounds = [0, *(np.flatnonzero(np.diff(depths)) + 1).tolist(), len(depths)]
    return [(lo, min(lo + batch_size, end)) for start, end in itertools.pairwise(bounds)
            for lo in range(start, end, batch_size)]


def _next_token_logits(module: torch.nn.Module, contexts: _ContextTree, nodes: np.ndarray,
                       explicit: ExplicitInputs, device: torch.device, keep_last: bool) -> torch.Tensor:
    """The float32 logits after each context of ``nodes`` (all of one depth, so no padding), ``[nodes, vocab]``."""
    depth = contexts.node_depth[int(nodes[0])]
    ids = torch.tensor([contexts.node_ids[int(k)][:depth] for k in nodes], dtype=torch.long, device=device)
    ones = torch.ones_like(ids)
    batch = as_batch((ids, ones, torch.zeros(len(nodes), dtype=torch.long, device=device), ones), explicit)
    extra = {"logits_to_keep": 1} if keep_last else {}
    logits = module(**model_inputs(batch), **extra).logits
    return logits[:, -1, :].float()


def _takes_logits_to_keep(module: torch.nn.Module) -> bool:
    """Whether the network (under a peft wrapper, which passes it on) computes only the last logits on request."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _check_untruncated(texts: tuple[str, ...], attention_mask: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                       max_length: int) -> None:
    """Only texts that fill all ``max_length`` slots may have been cut; re-tokenise just those to be sure."""
    full = torch.nonzero(attention_mask.sum(dim=1) >= max_length).flatten().tolist()
    for row in full:
        length = len(tokenizer(texts[row])["input_ids"])
        if length > max_length:
            raise ValueError(f"{texts[row]!r} has {length} tokens, more than max_length={max_length}")


def exposure_exact(secret_value: float, candidate_values: np.ndarray) -> float:
    """``log2 |R| - log2 rank`` with ``candidate_values`` the log-perplexities of all ``|R|`` candidates (the
    secret's among them) and rank the number of candidates at most as perplexing as the secret: ties count
    against the secret, so an indifferent model reveals nothing."""
    values = _finite_1d(candidate_values, "candidate")
    rank = int((values <= secret_value).sum())
    if rank == 0 or not math.isfinite(secret_value):
        raise ValueError(f"the secret's log-perplexity {secret_value} is not among the candidates'")
    return math.log2(len(values)) - math.log2(rank)


@dataclass(frozen=True)
class SkewNormal:
    """A skew-normal distribution of candidates' log-perplexities (scipy's ``skewnorm`` parameters)."""

    shape: float
    loc: float
    scale: float

    @classmethod
    def fit(cls, sample_values: np.ndarray) -> SkewNormal:
        """The maximum-likelihood fit to a random sample of candidates' log-perplexities."""
        values = _finite_1d(sample_values, "sample")
        if len(values) < 3 or np.ptp(values) == 0.0:
            raise ValueError(f"a skew-normal needs at least 3 distinct values, not {len(values)} (spread "
                             f"{np.ptp(values)})")
        shape, loc, scale = skewnorm.fit(values)
        return cls(float(shape), float(loc), float(scale))

    def exposure(self, value: float) -> float:
        """``-log2 F(value)``: bits of preference for ``value`` over the distribution's typical candidate."""
        log_cdf = float(skewnorm.logcdf(value, self.shape, self.loc, self.scale))
        return max(0.0, -log_cdf / math.log(2.0))


def exposure_skew_normal(secret_value: float, sample_values: np.ndarray) -> float:
    """The paper's exposure estimate when ranking every candidate is too costly: ``-log2 F(secret_value)`` with F
    the CDF of a skew-normal fitted to ``sample_values`` (a random sample of candidates' log-perplexities). May
    exceed ``log2 |R|`` (or be inf) far in the tail; :func:`measure_exposure` caps it there."""
    return SkewNormal.fit(sample_values).exposure(secret_value)


def _finite_1d(values: np.ndarray, who: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{who} values must be a non-empty 1-D array, not of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{int((~np.isfinite(array)).sum())} {who} values are NaN or infinite")
    return array


class ExposureMethod(enum.Enum):
    EXACT = "exact"  # every candidate ranked
    SKEW_NORMAL = "skew-normal"  # the rank estimated from a skew-normal fit to a sample of candidates


@dataclass(frozen=True)
class Exposure:
    """One secret's exposure (bits); ``insertions`` is how often it was in the training data (0: a control)."""

    number: int
    insertions: int
    exposure: float
    method: ExposureMethod


def measure_exposure(module: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: SecretFormat,
                     secrets: dict[int, int], max_length: int, explicit: ExplicitInputs, *,
                     rng: np.random.Generator, exact_limit: int = 100_000, sample_size: int = 5_000,
                     batch_size: int = 256) -> list[Exposure]:
    """The exposure of each secret (number -> insertions, 0 for a control), in the order of ``secrets``.

    Exact when ``fmt.space_size() <= exact_limit``: every candidate is scored once, in one batched pass shared by
    all secrets. Otherwise ``sample_size`` distinct candidates drawn with ``rng`` and the secrets are scored in one
    pass, one skew-normal is fitted to the sample, and each secret's estimate is capped at ``log2 |R|``.
    """
    _check_secrets(fmt, secrets)
    space = fmt.space_size()
    if space <= exact_limit:
        values = sequence_log_perplexities(module, tokenizer, [fmt.render(n) for n in range(space)], max_length,
                                           explicit, batch_size)
        return [Exposure(n, k, exposure_exact(float(values[n]), values), ExposureMethod.EXACT)
                for n, k in secrets.items()]
    sample = [int(n) for n in rng.choice(space, size=min(sample_size, space), replace=False)]
    numbers = list(secrets)
    values = sequence_log_perplexities(module, tokenizer, [fmt.render(n) for n in sample + numbers], max_length,
                                       explicit, batch_size)
    fit = SkewNormal.fit(values[:len(sample)])
    cap = math.log2(space)
    return [Exposure(n, secrets[n], min(cap, fit.exposure(float(v))), ExposureMethod.SKEW_NORMAL)
            for n, v in zip(numbers, values[len(sample):], strict=True)]


def _check_secrets(fmt: SecretFormat, secrets: dict[int, int]) -> None:
    if not secrets:
        raise ValueError("no secrets to measure")
    for number, insertions in secrets.items():
        fmt.render(number)  # ValueError outside the format's space
        if insertions < 0:
            raise ValueError(f"secret {number} has {insertions} insertions")
