"""Trainable tensors <-> one flat float32 vector: the unit that travels between clients and the server."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def flatten(params: Sequence[torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in params]).to(torch.float32).cpu().numpy()


def load_into(params: Sequence[torch.Tensor], vector: np.ndarray) -> None:
    """Copy ``vector`` into the tensors in place (keeps the Parameter objects that Opacus and optimizers hold)."""
    expected = sum(p.numel() for p in params)
    if vector.shape != (expected,):
        raise ValueError(f"vector has shape {vector.shape}, the trainable tensors hold {expected} values")
    flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32)).to(params[0].device) if params else None
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed for (run seed, round, client, ...): numpy's SeedSequence mixes them."""
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)
