"""Packing many fixed-point values into one big plaintext integer, so one Paillier ciphertext carries ~120 of them.

Each value v, a signed integer in [-L, L] with L = 2^(b-1) - 1 (the shared fixed-point encoding), is stored
offset as v + L, which lies in [0, 2^b - 2]: b bits, never negative. A slot is ``b + ceil(log2 n) + 1`` bits wide, so
the slot-wise sum of n clients' plaintexts, at most n (2^b - 2) < 2^(b + ceil(log2 n)), can never carry into the next
slot, and the extra guard bit of every slot stays clear; :meth:`SlotLayout.unpack_sum` checks the tighter bound
(each slot at most n (2^b - 2)), so a sum that no n honest inputs could produce is refused. A plaintext holds
``floor((key_bits - 1) / slot_bits)`` slots, so the packed sum stays below 2^(key_bits - 1) < n and Paillier's
addition modulo n never wraps. Every one of these limits is checked when the layout is made, before anything is
encrypted.

The vector's length travels beside the ciphertexts, so trailing values (zeros included) survive unpacking exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privfed.errors import ConfigError

MAX_SLOT_BITS = 64  # unpacking reads each summed slot as a uint64
CHUNK_VALUES = 1 << 18  # values packed or unpacked at a time (~25 MB of bit arrays)


@dataclass(frozen=True)
class SlotLayout:
    value_bits: int  # b: values are signed integers in [-(2^(b-1) - 1), 2^(b-1) - 1]
    max_clients: int  # n: how many packed vectors may be summed
    slot_bits: int  # b + ceil(log2 n) + 1
    slots: int  # values per plaintext

    @classmethod
    def for_clients(cls, value_bits: int, max_clients: int, plaintext_bits: int) -> SlotLayout:
        """The layout for summing ``max_clients`` vectors in plaintexts of ``plaintext_bits`` usable bits.

        Raises ConfigError for a layout whose sum could overflow a slot or the plaintext.
        """
        if value_bits < 2:
            raise ConfigError("aggregation.value_bits", f"must be >= 2, got {value_bits}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        slot_bits = value_bits + (max_clients - 1).bit_length() + 1  # (n - 1).bit_length() == ceil(log2 n)
        if slot_bits > MAX_SLOT_BITS:
            raise ConfigError("aggregation.value_bits",
                              f"{value_bits} value bits summed over {max_clients} clients need {slot_bits}-bit slots "
                              f"(value bits + ceil(log2 clients) + 1 guard), more than {MAX_SLOT_BITS}; "
                              "lower value_bits")
        slots = plaintext_bits // slot_bits
        if slots < 1:
            raise ConfigError("aggregation.key_bits", f"a {plaintext_bits}-bit plaintext cannot hold one "
                                                      f"{slot_bits}-bit slot")
        return cls(value_bits, max_clients, slot_bits, slots)

    @property
    def offset(self) -> int:
        return 2 ** (self.value_bits - 1) - 1

    @property
    def plaintext_bits(self) -> int:
        return self.slots * self.slot_bits

    def plaintexts_for(self, length: int) -> int:
        return -(-length // self.slots)

    def pack(self, values: np.ndarray) -> list[int]:
        """Signed integers in [-L, L] -> ceil(len / slots) non-negative ints below 2^plaintext_bits.

        Value i of a plaintext occupies its i-th slot counted from the most significant end.
        """
        ints = np.asarray(values)
        if not np.issubdtype(ints.dtype, np.integer):
            raise TypeError(f"pack takes integers (the fixed-point encoding's output), got {ints.dtype}")
        ints = ints.astype(np.int64)
        if ints.size and (ints.min() < -self.offset or ints.max() > self.offset):
            raise ValueError(f"values must lie in [-{self.offset}, {self.offset}] for {self.value_bits} value bits")
        count = self.plaintexts_for(ints.size)
        offset = np.zeros(count * self.slots, dtype=np.uint64)
        offset[:ints.size] = (ints + self.offset).astype(np.uint64)
        pad = -self.plaintext_bits % 8  # packbits fills the last byte with zeros at the low end
        plaintexts: list[int] = []
        step = self._plaintexts_per_chunk()
        for first in range(0, count, step):  # in chunks: the bit arrays take a byte per bit
            rows = offset[first * self.slots:(first + step) * self.slots]
            bits = _bits_of(rows, self.slot_bits).reshape(-1, self.plaintext_bits)
            plaintexts += [int.from_bytes(row.tobytes(), "big") >> pad for row in np.packbits(bits, axis=1)]
        return plaintexts

    def _plaintexts_per_chunk(self) -> int:
        return max(1, CHUNK_VALUES // self.slots)

    def unpack_sum(self, plaintexts: list[int], length: int, contributors: int) -> np.ndarray:
        """The slot-wise sum of ``contributors`` packed vectors -> the int64 sum of their values.

        Raises ValueError when a slot holds more than that many offset values can add up to (a corrupted sum, or
        one decrypted with the wrong key), instead of returning garbage.
        """
        if not 1 <= contributors <= self.max_clients:
            raise ValueError(f"the layout sums 1..{self.max_clients} vectors, got {contributors}")
        if len(plaintexts) != self.plaintexts_for(length):
            raise ValueError(f"{length} values need {self.plaintexts_for(length)} plaintexts, got {len(plaintexts)}")
        pad = -self.plaintext_bits % 8
        width = (self.plaintext_bits + pad) // 8
        step = self._plaintexts_per_chunk()
        parts = []
        for first in range(0, len(plaintexts), step):  # in chunks: the bit arrays take a byte per bit
            try:
                raw = b"".join((m << pad).to_bytes(width, "big") for m in plaintexts[first:first + step])
            except (OverflowError, TypeError):
                raise ValueError(f"a plaintext is not an integer of at most {self.plaintext_bits} bits: wrong key "
                                 "or corrupted sum") from None
            bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8).reshape(-1, width), axis=1)
            parts.append(_ints_of(bits[:, :self.plaintext_bits].reshape(-1, self.slot_bits)))
        sums = np.concatenate(parts)[:length] if parts else np.zeros(0, dtype=np.uint64)
        limit = contributors * 2 * self.offset
        if sums.size and int(sums.max()) > limit:
            raise ValueError(f"a slot sums to {int(sums.max())}, more than {contributors} clients can add up to "
                             f"({limit}): wrong key or corrupted sum")
        return sums.astype(np.int64) - contributors * self.offset


def _bits_of(words: np.ndarray, width: int) -> np.ndarray:
    """uint64 words -> their low ``width`` bits, most significant first, one uint8 per bit: shape (len, width)."""
    as_bytes = words.astype(">u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(as_bytes, axis=1)[:, 64 - width:]


def _ints_of(bits: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_bits_of`: rows of up to 64 bits (most significant first) -> uint64."""
    padded = np.zeros((bits.shape[0], 64), dtype=np.uint8)
    padded[:, 64 - bits.shape[1]:] = bits
    return np.packbits(padded, axis=1).view(">u8").reshape(-1).astype(np.uint64)
