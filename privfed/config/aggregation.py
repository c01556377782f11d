"""The ``aggregation:`` section: how the server sums the updates (plain, SecAgg/SecAgg+, packed Paillier), and
the encoding and simulated dropouts that go with it."""
from __future__ import annotations

import enum
import typing
import math
from dataclasses import dataclass

from privfed.config.fields import check, described


class Aggregation(enum.Enum):
    """How client updates are summed. Every back-end is a client half and a server half per round, talking in
    bytes (``privfed.aggregation``)."""

    PLAIN = "plain"  # the server sees each float32 update
    SECAGG = "secagg"  # pairwise masking (SecAgg / SecAgg+): the server learns only the sum
    PAILLIER = "paillier"  # packed Paillier encryption: the server adds ciphertexts, the clients decrypt the sum


class DropoutStage(enum.Enum):
    """The first protocol message that simulated dropouts fail to send (plain: before or after the upload)."""

    ADVERTISE_KEYS = "advertise_keys"  # vanish before the round really starts
    SHARE_KEYS = "share_keys"  # after advertising keys: peers never get their shares
    MASKED_INPUT = "masked_input"  # after sharing keys: their pairwise masks must be cancelled from their key
    UNMASKING = "unmasking"  # after sending their masked (plain: their) update: their input still counts


PAILLIER_KEY_BITS = (2048, 3072, 4096)



@dataclass(frozen=True)
class AggregationConfig:
    """How the server sums the updates. ``aggregation: secagg`` is short for ``aggregation: {method: secagg}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "method"

    method: Aggregation = described("plain | secagg | paillier", default=Aggregation.PLAIN)
    neighbours: int = described("secagg: masking neighbours per client, even (0 = all: classic SecAgg; ~2 log2 n: "
                                "SecAgg+)", default=0)
    threshold: float = described("secagg: share of a client's neighbourhood needed to unmask it (> 0.5)", default=0.6)
    clip_range: float = described("encoding: each transmitted value is clipped to [-R, R]", default=1.0)
    value_bits: int = described("encoding: signed fixed-point bits per value (0 = automatic: 20, or under a fixed "
                                "word_bits the most whose exact sum fits it)", default=0)
    word_bits: int = described("secagg: bits per value on the wire and of the sum's modulus 2^k, 4 to 64 (0 = "
                               "automatic: 32, or 64 when value_bits need it); 8 uploads a quarter of 32's bytes",
                               default=0)
    rotation: bool = described("secagg: rotate each update by a randomized Hadamard transform before quantising "
                               "(flattens it, so few bits lose less; pads to a power of two)", default=False)
    max_wrap_probability: float = described("secagg with distributed DP: the most a round's noisy sum may wrap around "
                                            "2^k in any value (Chernoff bound); decides the headroom left for noise",
                                            default=1e-9)
    consistency_check: bool = described("secagg: extra signed round against an active server", default=False)
    dropout_fraction: float = described("simulated: share of each round's participants that drop (at dropout_stage)",
                                        default=0.0)
    dropout_stage: DropoutStage = described("simulated: advertise_keys | share_keys | masked_input | unmasking",
                                            default=DropoutStage.UNMASKING)
    key_bits: int = described("paillier: modulus bits, 2048 | 3072 | 4096 (2048 only until 2030 per NIST)",
                              default=3072)
    key_file: str = described("paillier: the clients' shared key pair, made by `privfed keygen` (empty: client 0 "
                              "generates one per run and sends it to the others, sealed); over Flower the server's "
                              "public key (KEY.pub), the nodes holding the pair as node-config paillier-key",
                              default="")
    workers: int = described("paillier: processes that make obfuscators and decrypt (0 = one per CPU core)", default=0)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.neighbours >= 0 and self.neighbours % 2 == 0, "aggregation.neighbours",
              f"must be 0 (all) or an even number >= 2 (SecAgg+ ring), got {self.neighbours}")
        check(0.5 < self.threshold <= 1.0, "aggregation.threshold",
              f"must be in (0.5, 1]: a majority, so no two disjoint groups can both unmask; got {self.threshold}")
        check(self.clip_range > 0 and math.isfinite(self.clip_range), "aggregation.clip_range",
              "must be finite and > 0")
        check(self.value_bits == 0 or 2 <= self.value_bits <= 53, "aggregation.value_bits",
              f"must be 0 (automatic) or in [2, 53], got {self.value_bits}")
        check(0 < self.max_wrap_probability < 1, "aggregation.max_wrap_probability",
              f"must be in (0, 1), got {self.max_wrap_probability}")
        check(self.word_bits == 0 or 4 <= self.word_bits <= 64, "aggregation.word_bits",
              f"must be 0 (automatic) or in [4, 64], got {self.word_bits}")
        check(self.word_bits == 0 or self.method is Aggregation.SECAGG, "aggregation.word_bits",
              f"{self.word_bits}-bit words apply to secagg only (paillier packs value_bits into slots; plain sends "
              "float32)")
        check(not self.rotation or self.method is Aggregation.SECAGG, "aggregation.rotation",
              f"applies to secagg only, not {self.method.value}")
        check(0.0 <= self.dropout_fraction < 1.0, "aggregation.dropout_fraction", "must be in [0, 1)")
        check(not self.consistency_check or self.method is Aggregation.SECAGG, "aggregation.consistency_check",
              "applies to secagg only")
        check(self.key_bits in PAILLIER_KEY_BITS, "aggregation.key_bits",
              f"must be one of {', '.join(map(str, PAILLIER_KEY_BITS))}, got {self.key_bits}")
        check(self.workers >= 0, "aggregation.workers", "must be >= 0 (0 = one per CPU core)")
        check(not self.key_file or self.method is Aggregation.PAILLIER, "aggregation.key_file",
              "applies to paillier only")
