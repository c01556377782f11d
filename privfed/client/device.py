"""``training.device`` -> a torch device, refused up front when the machine cannot honour it."""
from __future__ import annotations

import torch

from privfed.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda``/``cuda:N`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("training.device", f"{spec} asked for, but torch sees no CUDA device (this torch build "
                                                 "or machine has none); use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("training.device", f"{spec} asked for, but torch sees {torch.cuda.device_count()} "
                                                 "CUDA device(s)")
    return device
