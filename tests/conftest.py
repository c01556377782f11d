"""Shared fixtures: tiny random-initialised models on small slices of the real offline datasets."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
