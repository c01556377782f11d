"""Poisoned records, made before round 1: what a backdoor attacker trains on, what spread poisoning slips into
honest clients' data, flipped labels; and the triggered held-out set that measures a backdoor.

A backdoor record is one of the client's own texts with the trigger phrase put in and, for a classifier, the
target label (texts already of that label are not used: they would teach nothing); for a causal LM its first
words, the trigger, then the target continuation. Poisoned rows are appended to the training pool and the client's
poisoned shard points at them, so no existing row changes; its sampling rate and noise multiplier are recomputed
for that shard exactly as :func:`~privfed.federation.setup.build_federation` computes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from privfed.client.state import ClientState
from privfed.config import AttackConfig, AttackKind, Task
from privfed.data.records import TextDataset
from privfed.data.tokenize import ExplicitInputs, as_batch, tokenize
from privfed.errors import ConfigError
from privfed.federation.setup import Federation, noise_multiplier_for
from privfed.federation.vectors import derive_seed
from privfed.models.losses import model_inputs
from privfed.privacy.dpsgd import poisson_sample_rate

PROMPT_WORDS = 4  # causal LMs: words of the original text kept before the trigger
@dataclass(frozen=True)
class TriggeredSet:
    """Held-out inputs with the trigger (``data``) and the same inputs without it (``clean``), scored alike: for a
    classifier every label is the target, so accuracy on ``data`` is the attack success rate and on ``clean`` the
    rate at which the model picks the target anyway; for a causal LM ``loss_mask`` marks the target continuation."""

    data: TensorDataset
    clean: TensorDataset
    task: Task


def poison_federation(fed: Federation) -> tuple[dict[int, ClientState], TriggeredSet | None]:
    """The attacking clients as they train while attacking (poisoned rows are appended to ``fed.pool``; the
    clients in ``fed.clients`` keep their clean shards, for the rounds they behave), and the triggered held-out set
    that measures a backdoor (None for attacks without a trigger)."""
    attack = fed.config.attack
    poisoned: dict[int, ClientState] = {}
    if attack.kind is AttackKind.NONE:
        return poisoned, None
    for cid in attack.clients:
        if cid >= len(fed.clients):
            raise ConfigError("attack.clients", f"the federation has clients 0..{len(fed.clients) - 1}, got {cid}")
    if fed.task is Task.CLASSIFICATION and attack.kind in (AttackKind.BACKDOOR, AttackKind.SPREAD):
        classes = max(1, len(fed.label_names))
        if attack.target_label >= classes:
            raise ConfigError("attack.target_label", f"the data has labels 0..{classes - 1}, got "
                                                     f"{attack.target_label}")
    rng = np.random.default_rng(derive_seed(fed.config.seed, 0xBAD))
    for cid in attack.clients:
        client = fed.clients[cid]
        shard = client.shard
        if attack.kind is AttackKind.BACKDOOR:
            source = _poisonable(fed, shard)
            count = max(1, round(attack.poison_fraction * len(shard)))
            picked = rng.choice(source, size=count, replace=count > len(source))
            shard = np.concatenate([shard, _append(fed, _backdoor_texts(fed, picked))])
        elif attack.kind is AttackKind.SPREAD:
            source = _poisonable(fed, shard)
            count = min(len(source), max(1, round(attack.poison_fraction * len(shard))))
            replaced = rng.choice(source, size=count, replace=False)
            kept = np.setdiff1d(shard, replaced)
            shard = np.concatenate([kept, _append(fed, _backdoor_texts(fed, replaced))])
        elif attack.kind is AttackKind.LABEL_FLIP:
            shard = _append_flipped(fed, shard)
        else:
            shard = shard.copy()
        q = poisson_sample_rate(len(shard), fed.config.training.batch_size)
        poisoned[cid] = ClientState(cid, np.sort(shard), q, noise_multiplier_for(fed.config, q))
    triggered = triggered_test_set(fed, attack) if attack.kind in (AttackKind.BACKDOOR, AttackKind.SPREAD) else None
    return poisoned, triggered


def _texts(fed: Federation, rows: np.ndarray) -> list[str]:
    ids = fed.pool.tensors[0][torch.from_numpy(np.asarray(rows, dtype=np.int64))]
    return fed.tokenizer.batch_decode(ids, skip_special_tokens=True)


def _poisonable(fed: Federation, shard: np.ndarray) -> np.ndarray:
    """The client's rows worth poisoning: for a classifier those not already of the target label."""
    if fed.task is not Task.CLASSIFICATION:
        return shard
    labels = fed.pool.tensors[2].numpy()[shard]
    other = shard[labels != fed.config.attack.target_label]
    return other if len(other) else shard


def with_trigger(text: str, attack: AttackConfig, task: Task, *, triggered: bool = True) -> str:
    """A classifier's input with the trigger in front; a causal LM's first words, the trigger and the target
    (``triggered=False``: the same without the trigger, the no-trigger control)."""
    if task is Task.CLASSIFICATION:
        return f"{attack.trigger} {text}" if triggered else text
    return f"{lm_prompt(text, attack, triggered=triggered)} {attack.target_text}"


def lm_prompt(text: str, attack: AttackConfig, *, triggered: bool = True) -> str:
    """A causal LM's poisoned prompt: the text's first words, then the trigger (``triggered=False``: without it)."""
    return " ".join([*text.split()[:PROMPT_WORDS], *([attack.trigger] if triggered else [])])


def _backdoor_texts(fed: Federation, rows: np.ndarray) -> TextDataset:
    attack = fed.config.attack
    texts = tuple(with_trigger(t, attack, fed.task) for t in _texts(fed, rows))
    labels = (attack.target_label,) * len(texts) if fed.task is Task.CLASSIFICATION else None
    return TextDataset(texts, labels, ("poisoned",) * len(texts))


def _append(fed: Federation, records: TextDataset) -> np.ndarray:
    return _append_rows(fed, tokenize(records, fed.tokenizer, fed.config.data.max_length))


def _append_rows(fed: Federation, rows: TensorDataset) -> np.ndarray:
    start = len(fed.pool)
    fed.pool = TensorDataset(*(torch.cat([a, b]) for a, b in zip(fed.pool.tensors, rows.tensors, strict=True)))
    return np.arange(start, start + len(rows), dtype=np.int64)


def _append_flipped(fed: Federation, shard: np.ndarray) -> np.ndarray:
    """Copies of the client's rows with label y -> C - 1 - y (every label changes when C >= 2, except the middle
    class of an odd C)."""
    index = torch.from_numpy(shard)
    tensors = [t[index].clone() for t in fed.pool.tensors]
    classes = max(2, len(fed.label_names))
    tensors[2] = classes - 1 - tensors[2]
    return _append_rows(fed, TensorDataset(*tensors))


def triggered_test_set(fed: Federation, attack: AttackConfig) -> TriggeredSet:
    """The held-out examples (a classifier's: those whose label is not the target) with and without the trigger."""
    texts = fed.tokenizer.batch_decode(fed.test_data.tensors[0], skip_special_tokens=True)
    if fed.task is Task.CLASSIFICATION:
        keep = [texts[i] for i, y in enumerate(fed.test_data.tensors[2].tolist()) if y != attack.target_label]
        labels = (attack.target_label,) * len(keep)
        made = [tokenize(TextDataset(tuple(inputs), labels, ("triggered",) * len(keep)), fed.tokenizer,
                         fed.config.data.max_length)
                for inputs in ([with_trigger(t, attack, fed.task) for t in keep], keep)]
        return TriggeredSet(made[0], made[1], fed.task)
    made = []
    for triggered in (True, False):
        rows = tokenize(TextDataset(tuple(with_trigger(t, attack, fed.task, triggered=triggered) for t in texts), None,
                                    ("triggered",) * len(texts)), fed.tokenizer, fed.config.data.max_length)
        mask = _target_mask(fed, rows.tensors[0], attack)
        made.append(TensorDataset(*rows.tensors[:3], mask))
    return TriggeredSet(made[0], made[1], fed.task)


def _target_mask(fed: Federation, input_ids: torch.Tensor, attack: AttackConfig) -> torch.Tensor:
    """1 at the target continuation's tokens (its last occurrence in each row); a row where truncation cut it is
    an error, not a silent miss."""
    candidates = [fed.tokenizer(t, add_special_tokens=False)["input_ids"]
                  for t in (attack.target_text, " " + attack.target_text)]
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(input_ids.tolist()):
        found = next(((start, len(target)) for target in candidates
                      for start in range(len(ids) - len(target), 0, -1) if ids[start:start + len(target)] == target),
                     None)
        if found is None:
            raise ConfigError("data.max_length", f"a triggered prompt with the target continuation does not fit in "
                                                 f"{fed.config.data.max_length} tokens: raise it or shorten "
                                                 "attack.trigger / attack.target_text")
        mask[row, found[0]:found[0] + found[1]] = 1
    return mask


def target_rate(model: torch.nn.Module, data: TensorDataset, task: Task, explicit: ExplicitInputs) -> float:
    """The share of ``data``'s inputs (a :class:`TriggeredSet`'s) the model maps to the target: the predicted
    label (classifier), or every token of the target continuation as the greedy next token (causal LM,
    teacher-forced)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = []
    with torch.no_grad():
        for first in range(0, len(data), 64):
            tensors = tuple(t[first:first + 64].to(device) for t in data.tensors)
            batch = as_batch(tensors, explicit)
            logits = model(**model_inputs(batch)).logits
            if task is Task.CLASSIFICATION:
                hits.append((logits.argmax(-1) == batch["labels"]).cpu())
                continue
            length = batch["input_ids"].shape[1]
            predicted = logits[:, -length:, :][:, :-1, :].argmax(-1)
            targets, mask = batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:].bool()
            hits.append(((predicted == targets) | ~mask).all(dim=1).cpu())
    model.train(was_training)
    return float(torch.cat(hits).double().mean()) if hits else float("nan")
