"""The ``data:`` section: where the examples come from and what one example is."""
from __future__ import annotations

import enum

from privfed.config.fields import check, described
from dataclasses import dataclass


class RecordFormat(enum.Enum):
    """What one example of ``data.source`` is, and which columns hold it."""

    TEXT = "text"  # one text (data.text_column): a document for causal LM, an input for classification
    PROMPT_RESPONSE = "prompt_response"  # an instruction pair, rendered as a user and an assistant turn
    CHAT = "chat"  # a list of {role, content} messages (data.messages_column)


class TextUnit(enum.Enum):
    """How a folder of plain-text files is cut into examples."""

    FILE = "file"  # one example per file
    LINE = "line"  # one example per non-empty line


@dataclass(frozen=True)
class ClientData:
    """One organisation's own data: a stable client id and the path of its file or folder."""

    id: str = described("stable client id (kept across runs; names the client in results and ledgers)", default="")
    path: str = described("the client's data: a file or folder in any data.source format", default="")


@dataclass(frozen=True)
class DataConfig:
    source: str = described("a built-in dataset (bbc_news | chatterbot | fortunes) or a local path: a .jsonl/.json, "
                            ".csv or .parquet file, a folder of them, a folder of .txt files, or a folder written by "
                            "datasets' save_to_disk (empty when data.clients names every client's path)",
                            default="bbc_news")
    records: RecordFormat = described("text | prompt_response | chat: what one example is", default=RecordFormat.TEXT)
    text_column: str = described("records text: the column holding the text", default="text")
    prompt_column: str = described("records prompt_response: the column holding the user's prompt", default="prompt")
    response_column: str = described("records prompt_response: the column holding the assistant's response",
                                     default="response")
    messages_column: str = described("records chat: the column holding the [{role, content}, ...] messages",
                                     default="messages")
    system_prompt: str = described("records prompt_response: a system turn put before every prompt (empty: none)",
                                   default="")
    label_column: str = described("the column holding class labels (empty: none; the label names are its distinct "
                                  "values, sorted)", default="")
    client_column: str = described("the column naming each example's organisation: natural clients (empty: for a "
                                   "folder, each file is one natural group)", default="")
    text_unit: TextUnit = described("folders of .txt files: one example per file | per line", default=TextUnit.FILE)
    clients: tuple[ClientData, ...] = described("per-client data: [{id, path}, ...], one natural client each "
                                                "(then data.source stays empty)", default=())
    max_length: int = described("tokens per example (truncate/pad)", default=64)
    test_fraction: float = described("share of the data held out for evaluation", default=0.2)
    eval_examples: int = described("held-out examples evaluated each round (0 = all)", default=400)
    max_examples: int = described("cap on examples loaded before splitting (0 = all)", default=0)
    validation_fraction: float = described("share of each client's training examples held out as the validation set "
                                           "that hyper-parameter tuning selects on (privfed sweep --tune), never the "
                                           "held-out test set; 0 = none", default=0.0)
    split_seed: int = described("seed of the train/test split, the client partition and the validation split (-1 = "
                                "the run's seed; privfed sweep --fixed-split keeps one split across seeds)", default=-1)
    languages: tuple[str, ...] = described("chatterbot languages to load", default=("english",))

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(8 <= self.max_length <= 2048, "data.max_length", f"must be in [8, 2048], got {self.max_length}")
        check(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        check(self.eval_examples >= 0, "data.eval_examples", "must be >= 0 (0 = all)")
        check(self.max_examples >= 0, "data.max_examples", "must be >= 0 (0 = all)")
        check(0.0 <= self.validation_fraction < 1.0, "data.validation_fraction",
              f"must be in [0, 1) (0 = no validation split), got {self.validation_fraction}")
        check(self.split_seed >= -1, "data.split_seed",
              f"must be >= 0, or -1 for the run's seed; got {self.split_seed}")
        check(len(self.languages) > 0, "data.languages", "must name at least one language")
        check(bool(self.source) != bool(self.clients), "data.source",
              "give either data.source (a built-in name or a path) or data.clients (one path per client), "
              + (f"not both (data.source is {self.source!r}: set data.source= to leave it empty)" if self.source
                 else "got neither"))
        ids = [c.id for c in self.clients]
        for i, client in enumerate(self.clients):
            check(bool(client.id) and "/" not in client.id, f"data.clients[{i}].id",
                  "must be a non-empty id without '/'")
            check(bool(client.path), f"data.clients[{i}].path", "must name the client's file or folder")
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        check(not duplicates, "data.clients", f"client ids must be unique; repeated: {', '.join(duplicates)}")
        check(not self.clients or not self.client_column, "data.client_column",
              "data.clients already names every client; leave data.client_column empty")
        needed = {RecordFormat.TEXT: ("text_column",), RecordFormat.PROMPT_RESPONSE: ("prompt_column",
                                                                                      "response_column"),
                  RecordFormat.CHAT: ("messages_column",)}[self.records]
        for key in needed:
            check(bool(getattr(self, key)), f"data.{key}", f"must name a column for records {self.records.value}")
        check(not self.system_prompt or self.records is RecordFormat.PROMPT_RESPONSE, "data.system_prompt",
              "applies to records prompt_response only (chat records carry their own system turns)")
