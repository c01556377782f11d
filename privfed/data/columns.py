"""Turn the columns of one table (a data file, a split, a folder of .txt files) into examples, by the column rules
of ``data``: the records format says which columns hold an example, ``label_column`` and ``client_column`` add a
label and a natural group.

Rows that hold no example (a null or empty text, prompt, response or message list, or a null label or client
value) are dropped and counted, so the caller can log one line per source; rows that hold something malformed
raise a :class:`~privfed.errors.ConfigError` that names the column's key, the table and the row.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from privfed.config import DataConfig, RecordFormat
from privfed.data.records import Chat, Message
from privfed.errors import ConfigError

ROLES = ("system", "user", "assistant")
INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Table:
    """One readable unit of a source: the natural group its rows belong to (unless ``client_column`` says
    otherwise), where it came from (named in messages) and its columns, each a list of row values."""

    group: str
    origin: str
    columns: dict[str, list[Any]]


@dataclass
class Examples:
    """Examples gathered from tables, labels still as text (their names are only known once every table is read)."""

    examples: list[str | Chat] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> rows dropped

    def extend(self, other: Examples) -> None:
        self.examples += other.examples
        self.labels += other.labels
        self.groups += other.groups
        self.dropped += other.dropped


def needed_columns(data: DataConfig) -> dict[str, str]:
    """The columns ``data`` reads, keyed by the config key that names each."""
    keys = {RecordFormat.TEXT: ["text_column"], RecordFormat.PROMPT_RESPONSE: ["prompt_column", "response_column"],
            RecordFormat.CHAT: ["messages_column"]}[data.records]
    keys += [key for key in ("label_column", "client_column") if getattr(data, key)]
    return {f"data.{key}": getattr(data, key) for key in keys}


def extract(table: Table, data: DataConfig) -> Examples:
    """The examples of ``table`` (labels as text, groups from ``client_column`` or the table's own group)."""
    for key, column in needed_columns(data).items():
        if column not in table.columns:
            raise ConfigError(key, f"{table.origin} has no column {column!r}; its columns: "
                                   + (", ".join(table.columns) or "none"))
    out = Examples()
    for row in range(_num_rows(table)):
        example = _example(table, row, data)
        label = _value_text(table.columns[data.label_column][row]) if data.label_column else ""
        group = _value_text(table.columns[data.client_column][row]) if data.client_column else table.group
        if example is None:
            out.dropped["no " + {RecordFormat.TEXT: "text", RecordFormat.PROMPT_RESPONSE: "prompt or response",
                                 RecordFormat.CHAT: "messages"}[data.records]] += 1
        elif label is None:
            out.dropped["no label"] += 1
        elif group is None:
            out.dropped["no client"] += 1
        else:
            out.examples.append(example)
            out.labels.append(label)
            out.groups.append(group)
    return out


def index_labels(values: Sequence[str]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Label indices and names: the distinct values sorted (numerically when every one is an integer)."""
    names = sorted(set(values), key=int if all(INTEGER.fullmatch(v) for v in values) else None)
    index = {name: i for i, name in enumerate(names)}
    return tuple(index[v] for v in values), tuple(names)


def _num_rows(table: Table) -> int:
    return len(next(iter(table.columns.values()))) if table.columns else 0


def _example(table: Table, row: int, data: DataConfig) -> str | Chat | None:
    if data.records is RecordFormat.TEXT:
        return _text(table, data.text_column, "data.text_column", row)
    if data.records is RecordFormat.PROMPT_RESPONSE:
        prompt = _text(table, data.prompt_column, "data.prompt_column", row)
        response = _text(table, data.response_column, "data.response_column", row)
        if prompt is None or response is None:
            return None
        system = (Message("system", data.system_prompt),) if data.system_prompt else ()
        return (*system, Message("user", prompt), Message("assistant", response))
    return _chat(table, data.messages_column, row)


def _text(table: Table, column: str, key: str, row: int) -> str | None:
    """A text cell as written; None when null, empty or only whitespace."""
    value = table.columns[column][row]
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(key, f"{table.origin} row {row + 1}: column {column!r} holds {type(value).__name__} "
                               f"{value!r}, not text")
    return value if value.strip() else None


def _chat(table: Table, column: str, row: int) -> Chat | None:
    """A messages cell as a Chat; None when null or empty. Roles must be system, user or assistant, and at least
    one turn the assistant's (the turns a causal LM learns to write)."""
    value = table.columns[column][row]
    if value is None or (isinstance(value, list) and not value):
        return None

    def malformed(problem: str) -> ConfigError:
        return ConfigError("data.messages_column", f"{table.origin} row {row + 1}: {problem}; expected a list of "
                                                   f"{{role, content}} with role in {', '.join(ROLES)}")

    if not isinstance(value, list):
        raise malformed(f"column {column!r} holds {type(value).__name__}, not a list of messages")
    chat = []
    for turn, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES \
                or not isinstance(message.get("content"), str):
            raise malformed(f"message {turn + 1} is {message!r}")
        chat.append(Message(message["role"], message["content"]))
    if not any(m.role == "assistant" for m in chat):
        raise malformed("no assistant turn")
    return tuple(chat)


def _value_text(value: Any) -> str | None:
    """A label or client cell as text (an integral float as its integer); None when null or empty."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None
