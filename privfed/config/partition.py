"""The ``partition:`` section: how the training pool is split into clients (non-IID schemes included)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from privfed.config.fields import check, described


class Partition(enum.Enum):
    """How the training pool is split into clients (flwr-datasets' partitioners, except natural packing)."""

    IID = "iid"  # uniform random shards of equal size
    DIRICHLET = "dirichlet"  # label skew: client label proportions ~ Dirichlet(alpha)
    PATHOLOGICAL = "pathological"  # label skew: each client holds partition.classes_per_client classes
    SHARD = "shard"  # label skew: label-sorted shards, partition.shards_per_client per client (McMahan et al.)
    SIZE_SKEW = "size_skew"  # quantity skew: client sizes grow linearly, quadratically or exponentially
    NATURAL = "natural"  # one client per natural group (a file, a topic, data.client_column, data.clients)


class SizeGrowth(enum.Enum):
    """How client sizes grow with the client index under ``partition.scheme=size_skew``."""

    LINEAR = "linear"
    SQUARE = "square"
    EXPONENTIAL = "exponential"


LABEL_SKEW = (Partition.DIRICHLET, Partition.PATHOLOGICAL, Partition.SHARD)  # the schemes that need labels


@dataclass(frozen=True)
class PartitionConfig:
    scheme: Partition = described("iid | dirichlet | pathological | shard | size_skew | natural",
                                  default=Partition.DIRICHLET)
    num_clients: int = described("number of clients (natural: 0 = one per group)", default=5)
    alpha: float = described("Dirichlet concentration; small = more skew", default=1.0)
    min_examples: int = described("minimum examples per client (Dirichlet redraws until met)", default=16)
    classes_per_client: int = described("pathological: classes each client holds", default=2)
    shards_per_client: int = described("shard: label-sorted shards each client holds", default=2)
    size_growth: SizeGrowth = described("size_skew: linear | square | exponential", default=SizeGrowth.LINEAR)
    max_client_examples: int = described("cap on each client's training examples, drawn at random from its share "
                                         "(0 = all): how per-client data size alone moves quality", default=0)

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.num_clients >= 0, "partition.num_clients", "must be >= 1 (or 0 = one per group with natural)")
        check(self.num_clients >= 1 or self.scheme is Partition.NATURAL, "partition.num_clients",
              "must be >= 1 (0 is allowed only with scheme natural)")
        check(self.alpha > 0, "partition.alpha", f"must be > 0, got {self.alpha}")
        check(self.min_examples >= 1, "partition.min_examples", "must be >= 1")
        check(self.classes_per_client >= 1, "partition.classes_per_client", "must be >= 1")
        check(self.shards_per_client >= 1, "partition.shards_per_client", "must be >= 1")
        check(self.max_client_examples >= 0, "partition.max_client_examples", "must be >= 0 (0 = all)")
