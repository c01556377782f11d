"""Tokenise texts once into padded tensors; batches are trimmed to their longest example at use time."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset
from transformers import PreTrainedTokenizerBase

from privfed.data.records import TextDataset

FIELDS = ("input_ids", "attention_mask", "labels")


def tokenize(data: TextDataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> TensorDataset:
    """A TensorDataset of (input_ids, attention_mask, labels); labels are 0 for causal-LM data (unused)."""
    tokenizer.padding_side = "right"  # as_batch trims trailing padding
    enc = tokenizer(list(data.examples), max_length=max_length, truncation=True, padding="max_length",
                    return_tensors="pt")
    labels = torch.tensor(data.labels if data.labels is not None else [0] * len(data), dtype=torch.long,
                          device="cpu")  # datasets stay on the CPU; each batch moves to the model's device
    return TensorDataset(enc["input_ids"], enc["attention_mask"], labels)


def as_batch(tensors: tuple[torch.Tensor, ...], explicit_positions: bool = False) -> dict[str, torch.Tensor]:
    """Name the tensors of a batch and drop the padding columns that no example in it uses.

    ``explicit_positions`` adds per-example ``position_ids`` and ``token_type_ids``. BERT otherwise looks its
    position and token-type embeddings up with one broadcast row, so Opacus would see a batch of 1 for them;
    needed whenever those embeddings train (full and pre-training regimes).
    """
    batch = dict(zip(FIELDS, tensors))
    mask = batch["attention_mask"]
    if mask.shape[0] > 0:
        used = int(mask.sum(dim=1).max().item())
        keep = max(used, 2)
        # contiguous: Opacus' embedding norm sampler (ghost clipping) views the ids as one column
        batch["input_ids"] = batch["input_ids"][:, :keep].contiguous()
        batch["attention_mask"] = mask[:, :keep].contiguous()
    if explicit_positions:
        ids = batch["input_ids"]
        batch["position_ids"] = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids).contiguous()
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch
