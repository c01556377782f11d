"""The examples of a run before tokenisation: texts or chats, with optional labels and natural groups."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Message:
    """One turn of a chat: ``role`` is ``system``, ``user`` or ``assistant`` (the chat-template convention)."""

    role: str
    content: str


Chat = tuple[Message, ...]


@dataclass(frozen=True)
class TextDataset:
    """Raw examples, all of one kind: texts (``chat`` False) or chats (``chat`` True; prompt/response pairs are
    loaded as two-turn chats). ``labels`` is None for unlabelled data; ``groups`` names each example's natural
    source (a file, a topic, a client id) and ``label_names`` the classes that ``labels`` index."""

    examples: tuple[str, ...] | tuple[Chat, ...]
    labels: tuple[int, ...] | None
    groups: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    chat: bool = False

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.examples) or (self.labels is not None and len(self.labels) != len(self)):
            raise ValueError(f"{len(self.examples)} examples but {len(self.groups)} groups"
                             + ("" if self.labels is None else f" and {len(self.labels)} labels"))

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: np.ndarray) -> TextDataset:
        idx = [int(i) for i in indices]
        return TextDataset(
            examples=tuple(self.examples[i] for i in idx),  # type: ignore[arg-type]
            labels=None if self.labels is None else tuple(self.labels[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
            label_names=self.label_names,
            chat=self.chat,
        )

    def relabelled(self, label_names: tuple[str, ...]) -> TextDataset:
        """The same examples with labels indexing ``label_names`` (a federation's classes, of which this data may
        hold only some); ValueError naming any label ``label_names`` lacks."""
        if self.labels is None or label_names == self.label_names:
            return self
        unknown = sorted(set(self.label_names) - set(label_names))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the federation's classes {list(label_names)}")
        index = {name: i for i, name in enumerate(label_names)}
        return TextDataset(self.examples, tuple(index[self.label_names[y]] for y in self.labels), self.groups,
                           label_names, self.chat)
