"""Split a training pool into federated clients: iid, Dirichlet label skew, or natural groups."""
from __future__ import annotations

from collections import Counter

import numpy as np

from privfed.config import Partition, PartitionConfig
from privfed.data.records import TextDataset
from privfed.errors import ConfigError


def partition_iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform random shards of (almost) equal size."""
    if num_clients > n:
        raise ConfigError("partition.num_clients", f"{num_clients} clients but only {n} training examples")
    return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]


def partition_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                        min_examples: int = 1, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: for each class, its examples are split across clients with proportions ~ Dirichlet(alpha).

    Redraws until every client holds at least ``min_examples`` (the usual rule of Hsu et al. 2019 / FedLab).
    """
    if num_clients * min_examples > len(labels):
        raise ConfigError("partition.num_clients",
                          f"{num_clients} clients x {min_examples} examples exceeds the {len(labels)} available")
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                shards[client].extend(chunk.tolist())
        if min(len(s) for s in shards) >= min_examples:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ConfigError("partition.alpha", f"alpha={alpha} left a client with fewer than {min_examples} examples "
                      f"in {max_tries} draws; raise alpha or lower partition.min_examples")


def partition_natural(groups: list[str], num_clients: int) -> list[np.ndarray]:
    """One client per natural group; with fewer clients than groups, whole groups are packed greedily by size."""
    counts = Counter(groups)
    names = sorted(counts, key=lambda g: (-counts[g], g))
    if num_clients == 0:
        num_clients = len(names)
    if num_clients > len(names):
        raise ConfigError("partition.num_clients",
                          f"{num_clients} clients but the data has only {len(names)} natural groups (0 = one each)")
    owner: dict[str, int] = {}
    load = [0] * num_clients
    for name in names:  # largest first onto the lightest client: balanced, deterministic
        client = int(np.argmin(load))
        owner[name] = client
        load[client] += counts[name]
    members: list[list[int]] = [[] for _ in range(num_clients)]
    for i, g in enumerate(groups):
        members[owner[g]].append(i)
    return [np.asarray(m, dtype=np.int64) for m in members]


def partition(pool: TextDataset, cfg: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Index arrays into ``pool``, one per client."""
    if cfg.scheme is Partition.IID:
        return partition_iid(len(pool), cfg.num_clients, rng)
    if cfg.scheme is Partition.DIRICHLET:
        if pool.labels is None:
            raise ConfigError("partition.scheme", "dirichlet needs labelled data; use iid or natural")
        return partition_dirichlet(np.asarray(pool.labels), cfg.num_clients, cfg.alpha, rng, cfg.min_examples)
    return partition_natural(list(pool.groups), cfg.num_clients)


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
