"""Split a training pool into federated clients with Flower Datasets' partitioners (natural packing aside).

flwr-datasets partitions a Hugging Face ``datasets.Dataset``; privfed hands it a small table of the pool's row
numbers, labels and groups (the texts are not needed), in a seeded random order, and reads each client's row numbers
back from ``load_partition``. The random order matters: the iid and size-skew partitioners cut contiguous blocks,
and the label-skew ones take each class's examples in table order.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    ExponentialPartitioner,
    IidPartitioner,
    LinearPartitioner,
    NaturalIdPartitioner,
    PathologicalPartitioner,
    ShardPartitioner,
    SquarePartitioner,
)
from flwr_datasets.partitioner.partitioner import Partitioner

from privfed.config import LABEL_SKEW, Partition, PartitionConfig, SizeGrowth
from privfed.data.records import TextDataset
from privfed.errors import ConfigError

log = logging.getLogger(__name__)

ROW, LABEL, GROUP = "row", "label", "group"  # the columns of the table handed to flwr-datasets

_SIZE_SKEW = {SizeGrowth.LINEAR: LinearPartitioner, SizeGrowth.SQUARE: SquarePartitioner,
              SizeGrowth.EXPONENTIAL: ExponentialPartitioner}


def partition(pool: TextDataset, cfg: PartitionConfig, rng: np.random.Generator,
              client_order: tuple[str, ...] = ()) -> list[np.ndarray]:
    """Sorted int64 index arrays into ``pool``, one per client, drawn reproducibly from ``rng``.

    ``client_order``: natural groups in the order their clients are numbered (``data.clients``' ids, as the config
    lists them); by default, natural clients are numbered largest group first, as privfed always has.

    Every example goes to exactly one client, except under pathological (the classes no client drew: none when
    num_clients >= the number of classes) and shard (the n mod (num_clients x shards_per_client) examples left over
    by equal-size shards); those drops are logged.
    """
    if cfg.scheme is Partition.NATURAL:
        return partition_natural(pool.groups, cfg, client_order)
    check_feasible(pool, cfg)
    table = flwr_table(pool, rng.permutation(len(pool)))
    with flwr_refusals(cfg):
        shards = draw_shards(cfg, table, rng)
    dropped = len(pool) - sum(map(len, shards))
    if dropped:
        log.warning("partition.scheme=%s left %d of %d training examples on no client", cfg.scheme.value,
                    dropped, len(pool))
    return shards


def partition_natural(groups: tuple[str, ...], cfg: PartitionConfig,
                      client_order: tuple[str, ...] = ()) -> list[np.ndarray]:
    """One client per natural group (flwr's NaturalIdPartitioner), numbered in ``client_order`` or largest group
    first; or, with fewer clients than groups, whole groups packed onto clients, largest group first onto the
    lightest client.

    The packing is privfed's own: flwr-datasets has no partitioner that keeps groups whole on fewer clients
    (GroupedNaturalIdPartitioner groups ids by count, in id order, and drops or merges the leftover ids).
    """
    counts = Counter(groups)
    if cfg.num_clients > len(counts):
        raise ConfigError("partition.num_clients", f"{cfg.num_clients} clients but the data has only "
                          f"{len(counts)} natural groups (0 = one each)")
    if cfg.num_clients in (0, len(counts)):
        # its tqdm bar ("Generating partition_id_to_indices") has no switch and would ignore --no-progress
        with flwr_refusals(cfg), contextlib.redirect_stderr(io.StringIO()):
            shards = read_shards(NaturalIdPartitioner(partition_by=GROUP), natural_table(groups))
        of_group = {groups[int(shard[0])]: shard for shard in shards}
        return [of_group[g] for g in client_order or sorted(counts, key=lambda g: (-counts[g], g))]
    return pack_groups(groups, counts, cfg.num_clients)


def pack_groups(groups: tuple[str, ...], counts: Counter[str], num_clients: int) -> list[np.ndarray]:
    """Whole groups onto ``num_clients`` clients, largest first onto the lightest client: balanced, deterministic."""
    owner: dict[str, int] = {}
    load = [0] * num_clients
    for name in sorted(counts, key=lambda g: (-counts[g], g)):
        client = int(np.argmin(load))
        owner[name] = client
        load[client] += counts[name]
    members: list[list[int]] = [[] for _ in range(num_clients)]
    for i, g in enumerate(groups):
        members[owner[g]].append(i)
    return [np.asarray(m, dtype=np.int64) for m in members]


def check_feasible(pool: TextDataset, cfg: PartitionConfig) -> None:
    """Refuse, naming the key, what no partitioner can do with this pool (clearer than flwr's own messages)."""
    n = len(pool)
    if cfg.num_clients > n:
        raise ConfigError("partition.num_clients", f"{cfg.num_clients} clients but only {n} training examples")
    if cfg.scheme in LABEL_SKEW and pool.labels is None:
        raise ConfigError("partition.scheme",
                          f"{cfg.scheme.value} skews labels, but the data has none; use iid, size_skew or natural")
    if cfg.scheme is Partition.DIRICHLET and cfg.num_clients * cfg.min_examples > n:
        raise ConfigError("partition.num_clients", f"{cfg.num_clients} clients x {cfg.min_examples} examples "
                          f"exceeds the {n} available; use fewer clients or lower partition.min_examples")
    classes = len(set(pool.labels or ()))
    if cfg.scheme is Partition.PATHOLOGICAL and cfg.classes_per_client > classes:
        raise ConfigError("partition.classes_per_client",
                          f"{cfg.classes_per_client} classes per client but the pool has only {classes}")
    if cfg.scheme is Partition.SHARD and cfg.num_clients * cfg.shards_per_client > n:
        raise ConfigError("partition.shards_per_client", f"{cfg.num_clients} clients x {cfg.shards_per_client} "
                          f"shards needs at least as many examples, but the pool has {n}")


def flwr_table(pool: TextDataset, order: np.ndarray) -> datasets.Dataset:
    """The pool's row numbers (and labels, if any) in the given order: what flwr's partitioners split."""
    columns: dict[str, np.ndarray] = {ROW: order.astype(np.int64)}
    if pool.labels is not None:
        columns[LABEL] = np.asarray(pool.labels, dtype=np.int64)[order]
    return datasets.Dataset.from_dict(columns)


def natural_table(groups: tuple[str, ...]) -> datasets.Dataset:
    """Row numbers and natural group names, in pool order (natural partitions draw nothing at random)."""
    return datasets.Dataset.from_dict({ROW: np.arange(len(groups), dtype=np.int64), GROUP: list(groups)})


def partitioner_for(cfg: PartitionConfig, seed: int) -> Partitioner:
    """The flwr-datasets partitioner of a non-natural scheme; ``seed`` drives its random draws.

    Shuffling inside a partition is off: privfed sorts each client's indices anyway. flwr's Dirichlet draws at most
    11 times before giving up on min_partition_size (:func:`draw_shards` retries it with new seeds).
    """
    k = cfg.num_clients
    if cfg.scheme is Partition.IID:
        return IidPartitioner(num_partitions=k)
    if cfg.scheme is Partition.DIRICHLET:
        return DirichletPartitioner(num_partitions=k, partition_by=LABEL, alpha=float(cfg.alpha),
                                    min_partition_size=cfg.min_examples, self_balancing=False, shuffle=False,
                                    seed=seed)
    if cfg.scheme is Partition.PATHOLOGICAL:  # client i's first class is i mod C: all C used when k >= C
        return PathologicalPartitioner(num_partitions=k, partition_by=LABEL,
                                       num_classes_per_partition=cfg.classes_per_client,
                                       class_assignment_mode="first-deterministic", shuffle=False, seed=seed)
    if cfg.scheme is Partition.SHARD:  # equal shards of floor(n / (k x s)) label-sorted examples
        return ShardPartitioner(num_partitions=k, partition_by=LABEL, num_shards_per_partition=cfg.shards_per_client,
                                shuffle=False, seed=seed)
    return _SIZE_SKEW[cfg.size_growth](num_partitions=k)


DIRICHLET_SEEDS = 9  # x flwr's 11 draws per seed: about the 100 draws privfed's own Dirichlet split made


def draw_shards(cfg: PartitionConfig, table: datasets.Dataset, rng: np.random.Generator) -> list[np.ndarray]:
    """The partitioner's shards. flwr's Dirichlet gives up on ``min_partition_size`` after 11 draws; small pools
    with a tight minimum need more, so its refusal is retried with fresh seeds (the first seed's success, the
    usual case, consumes exactly one seed from ``rng``)."""
    for _ in range(DIRICHLET_SEEDS - 1 if cfg.scheme is Partition.DIRICHLET else 0):
        with contextlib.suppress(ValueError):
            return read_shards(partitioner_for(cfg, int(rng.integers(2**63))), table)
    return read_shards(partitioner_for(cfg, int(rng.integers(2**63))), table)  # its refusal is the error


@contextmanager
def flwr_refusals(cfg: PartitionConfig) -> Iterator[None]:
    """Around flwr-datasets calls: its warnings silenced, its ValueErrors raised as ConfigErrors.

    flwr warns on every Dirichlet redraw (privfed raises if all fail) and about unused classes with advice for its
    own API (privfed logs the dropped examples).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ValueError as error:
        raise refusal(cfg, error) from error


def read_shards(partitioner: Partitioner, table: datasets.Dataset) -> list[np.ndarray]:
    """Give ``partitioner`` the table and read each partition's row numbers back (``load_partition``), sorted."""
    partitioner.dataset = table
    return [np.sort(np.asarray(partitioner.load_partition(pid)[ROW], dtype=np.int64))
            for pid in range(partitioner.num_partitions)]


def refusal(cfg: PartitionConfig, error: ValueError) -> ConfigError:
    """flwr's ValueError as a one-line ConfigError naming the key to change (and quoting flwr's first sentence)."""
    key, remedy = {
        Partition.IID: ("partition.num_clients", "use fewer clients"),
        Partition.DIRICHLET: ("partition.alpha", (f"no Dirichlet draw with alpha={cfg.alpha} gave every client "
                                                  f"{cfg.min_examples} examples; raise partition.alpha or lower "
                                                  "partition.min_examples")),
        Partition.PATHOLOGICAL: ("partition.classes_per_client", "lower it or partition.num_clients"),
        Partition.SHARD: ("partition.shards_per_client", "lower it or partition.num_clients"),
        Partition.SIZE_SKEW: ("partition.num_clients", (f"{cfg.size_growth.value} growth leaves the smallest client "
                                                        "empty; use fewer clients or a slower partition.size_growth")),
        Partition.NATURAL: ("partition.num_clients", "use 0 (one client per natural group)"),
    }[cfg.scheme]
    return ConfigError(key, f"{remedy} (flwr-datasets: {first_sentence(str(error))})")


def first_sentence(message: str, limit: int = 160) -> str:
    """A multi-line message cut to its first sentence, on one line, at most ``limit`` characters."""
    flat = " ".join(message.split())
    cut = flat.find(". ")
    sentence = flat if cut < 0 else flat[:cut + 1]
    return sentence if len(sentence) <= limit else sentence[:limit - 3] + "..."


def natural_owners(pool: TextDataset, shards: list[np.ndarray], groups: tuple[str, ...]) -> np.ndarray:
    """For each of ``groups`` (e.g. the held-out examples' groups), the client whose shard holds that natural group;
    -1 where no client does. Natural partitions give each group to exactly one client, so this is well defined."""
    owner = {pool.groups[int(i)]: cid for cid, idx in enumerate(shards) for i in idx}
    return np.asarray([owner.get(g, -1) for g in groups], dtype=np.int64)


def describe(pool: TextDataset, shards: list[np.ndarray]) -> list[dict]:
    """Per-client size, label histogram (classification) and natural groups, for results.json."""
    out = []
    for cid, idx in enumerate(shards):
        entry: dict = {"client": cid, "examples": len(idx)}
        if pool.labels is not None:
            hist = np.bincount(np.asarray(pool.labels)[idx], minlength=len(pool.label_names))
            entry["label_histogram"] = {name: int(c) for name, c in zip(pool.label_names, hist)}
        groups = Counter(pool.groups[i] for i in idx)
        entry["groups"] = dict(sorted(groups.items()))
        out.append(entry)
    return out
