"""Tokenise examples once into padded tensors; batches are trimmed to their longest example at use time."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from privfed.data.chat import encode_chat
from privfed.data.records import Chat, TextDataset

log = logging.getLogger(__name__)

# loss_mask: 1 where a token is scored as a causal-LM target. Texts: every real token (the attention mask);
# chats: the assistant's tokens (privfed.data.chat).
FIELDS = ("input_ids", "attention_mask", "labels", "loss_mask")


def tokenize(data: TextDataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> TensorDataset:
    """A TensorDataset of :data:`FIELDS`, truncated and padded to ``max_length``; labels are 0 for unlabelled
    data (unused)."""
    tokenizer.padding_side = "right"  # as_batch trims trailing padding
    if data.chat:
        input_ids, attention_mask, loss_mask = _encode_chats(data.examples, tokenizer, max_length)  # type: ignore[arg-type]
    else:
        enc = tokenizer(list(data.examples), max_length=max_length, truncation=True, padding="max_length",
                        return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        loss_mask = attention_mask.clone()
    labels = torch.tensor(data.labels if data.labels is not None else [0] * len(data), dtype=torch.long,
                          device="cpu")  # datasets stay on the CPU; each batch moves to the model's device
    return TensorDataset(input_ids, attention_mask, labels, loss_mask)


def _encode_chats(chats: tuple[Chat, ...], tokenizer: PreTrainedTokenizerBase,
                  max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rendered chats cut to ``max_length`` tokens: (input_ids, attention_mask, assistant mask), right-padded."""
    shape = (len(chats), max_length)
    input_ids = torch.full(shape, tokenizer.pad_token_id, dtype=torch.long, device="cpu")  # datasets stay on the CPU
    attention_mask = torch.zeros(shape, dtype=torch.long, device="cpu")
    loss_mask = torch.zeros(shape, dtype=torch.long, device="cpu")
    truncated_away = 0  # chats left without an assistant token by truncation
    for row, chat in enumerate(chats):
        ids, mask = encode_chat(chat, tokenizer)
        n = min(len(ids), max_length)
        input_ids[row, :n] = torch.tensor(ids[:n], dtype=torch.long, device="cpu")
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(mask[:n], dtype=torch.long, device="cpu")
        truncated_away += any(mask) and not any(mask[:n])
    if truncated_away:
        log.warning("%d of %d chats lose all their assistant tokens to truncation at data.max_length=%d: they add "
                    "nothing to the loss", truncated_away, len(chats), max_length)
    return input_ids, attention_mask, loss_mask


@dataclass(frozen=True)
class ExplicitInputs:
    """Per-example inputs :func:`as_batch` adds to every batch (see :mod:`privfed.models.inputs` for why)."""

    position_ids: bool = False
    token_type_ids: bool = False


NO_EXPLICIT_INPUTS = ExplicitInputs()


def as_batch(tensors: tuple[torch.Tensor, ...], explicit: ExplicitInputs = NO_EXPLICIT_INPUTS
             ) -> dict[str, torch.Tensor]:
    """Name the tensors of a batch and drop the padding columns that no example in it uses.

    ``explicit`` adds per-example ``position_ids`` and/or ``token_type_ids``
    (:func:`privfed.models.inputs.explicit_inputs` says which a model needs so that Opacus sees every example).
    """
    batch = dict(zip(FIELDS, tensors, strict=True))
    mask = batch["attention_mask"]
    if mask.shape[0] > 0:
        used = int(mask.sum(dim=1).max().item())
        keep = max(used, 2)
        # contiguous: Opacus' embedding norm sampler (ghost clipping) views the ids as one column
        for name in ("input_ids", "attention_mask", "loss_mask"):
            batch[name] = batch[name][:, :keep].contiguous()
    ids = batch["input_ids"]
    if explicit.position_ids:
        batch["position_ids"] = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids).contiguous()
    if explicit.token_type_ids:
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch
