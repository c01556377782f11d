"""Shared fixtures: tiny random-initialised models on small slices of the real offline datasets."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _usable_cores() -> int:
    """The cores this process may run on (its affinity: a CPU set or ``taskset`` counts, hyper-threads count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# `pytest -n N` (pytest-xdist): the N workers share the machine's cores, so torch in each of them, and in every
# process a test starts (CLI runs, notebook kernels, Flower nodes), gets its share instead of all of them; a thread
# count the user set is kept
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _THREADS = max(1, _usable_cores() // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    import torch

    torch.set_num_threads(_THREADS)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per usable core, hyper-threads included (xdist's own count of physical cores gives 1
    on a 2-vCPU machine that reports one core, or when it cannot tell), at most 8: each worker holds torch and its
    tiny models."""
    return max(1, min(8, _usable_cores()))


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
