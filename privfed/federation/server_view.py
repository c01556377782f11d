"""What the server received in one aggregation round, as it received it: for inspection and privacy attacks.

Pass a fresh :class:`ServerView` to ``Aggregator.aggregate(..., view=...)`` and it fills with every message a
client sends the server during that round (sender, type, size) and, per client, the vector the server could read
from its upload: the float32 update itself under ``plain``, the masked words under ``secagg``, the Paillier
ciphertexts under ``paillier`` (whose decrypting client also returns the plaintext sum, PAILLIER_DECRYPTED).
(Paillier's one-off key hand-out happens when the aggregator is built, before any round, and is not part of a
round's view.) Recording is opt-in and lives outside the server halves, which keep only running sums: the
transport's tap files each message, decoded by the server half as the server could read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReceivedMessage:
    sender: int
    kind: str  # the message type, e.g. "MASKED_INPUT", "PAILLIER_INPUT", "PLAIN_UPDATE"
    size: int  # bytes on the wire


@dataclass
class ServerView:
    messages: list[ReceivedMessage] = field(default_factory=list)
    uploads: dict[int, np.ndarray] = field(default_factory=dict)  # client -> its upload as the server saw it

    def record(self, sender: int, kind: str, size: int, upload: np.ndarray | None = None) -> None:
        self.messages.append(ReceivedMessage(sender, kind, size))
        if upload is not None:
            self.uploads[sender] = upload

    def bytes_from(self, sender: int) -> int:
        """Everything ``sender`` sent the server this round, in bytes."""
        return sum(m.size for m in self.messages if m.sender == sender)

    def kinds(self) -> dict[str, int]:
        """Message type -> how many the server received."""
        counts: dict[str, int] = {}
        for m in self.messages:
            counts[m.kind] = counts.get(m.kind, 0) + 1
        return counts
