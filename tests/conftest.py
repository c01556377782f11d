"""Shared fixtures: tiny random-initialised models on small slices of the real offline datasets."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `pytest -n N` (pytest-xdist): the N workers share the machine's cores, so torch in each of them, and in every
# process a test starts (CLI runs, notebook kernels, Flower nodes), gets its share instead of all of them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from privfed.config import ExperimentConfig, apply_overrides, from_dict

TINY_CLASSIFIER = {
    "name": "tiny-bert",
    "seed": 1,
    "data": {"source": "bbc_news", "max_length": 32, "max_examples": 240, "eval_examples": 60},
    "partition": {"scheme": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "model": {"source": "tiny_bert", "regime": "full"},
    "privacy": {"mode": "off"},
    "training": {"rounds": 2, "local_steps": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}

TINY_CAUSAL = {
    "name": "tiny-llama",
    "seed": 2,
    "data": {"source": "chatterbot", "max_length": 32, "max_examples": 300, "eval_examples": 60},
    "partition": {"scheme": "natural", "num_clients": 3},
    "model": {"source": "tiny_llama", "regime": "pretrain"},
    "privacy": {"mode": "off"},
    "training": {"rounds": 2, "local_steps": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
}


def make_config(base: dict, *overrides: str) -> ExperimentConfig:
    return from_dict(apply_overrides(base, list(overrides)))


@pytest.fixture
def tiny_classifier():
    return lambda *o: make_config(TINY_CLASSIFIER, *o)


@pytest.fixture
def tiny_causal():
    return lambda *o: make_config(TINY_CAUSAL, *o)
