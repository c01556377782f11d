"""privfed.data.partition on Flower Datasets' partitioners: coverage, reproducibility, skew, natural groups, errors."""
import logging
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.config import Partition, PartitionConfig, SizeGrowth
from privfed.data.partition import describe, natural_owners, partition
from privfed.data.records import TextDataset
from privfed.errors import ConfigError

N, CLASSES, GROUPS = 1003, 5, 7


def _pool(n: int = N, labelled: bool = True, groups: list[str] | None = None) -> TextDataset:
    """A pool of ``n`` placeholder texts with unevenly sized classes and 7 round-robin groups (texts are unused)."""
    labels = np.random.default_rng(1).choice(CLASSES, size=n, p=[0.35, 0.25, 0.2, 0.12, 0.08])
    return TextDataset(examples=("x",) * n, labels=tuple(int(x) for x in labels) if labelled else None,
                       groups=tuple(groups or [f"g{i % GROUPS}" for i in range(n)]),
                       label_names=tuple("abcde") if labelled else ())


def _split(pool: TextDataset, cfg: PartitionConfig, seed: int = 0) -> list[np.ndarray]:
    return partition(pool, cfg, np.random.default_rng(seed))


def _labels_of(pool: TextDataset, shard: np.ndarray) -> np.ndarray:
    return np.asarray(pool.labels)[shard]


def _assert_disjoint_sorted(shards: list[np.ndarray], n: int) -> np.ndarray:
    """The shards are sorted int64 indices into the pool, no index twice; returns all of them."""
    for shard in shards:
        assert shard.dtype == np.int64 and np.all(np.diff(shard) > 0)
    joined = np.concatenate(shards)
    assert len(np.unique(joined)) == len(joined) and joined.min() >= 0 and joined.max() < n
    return joined


SCHEMES = [
    PartitionConfig(scheme=Partition.IID, num_clients=7),
    PartitionConfig(scheme=Partition.DIRICHLET, num_clients=7, alpha=0.5, min_examples=10),
    PartitionConfig(scheme=Partition.PATHOLOGICAL, num_clients=7, classes_per_client=2),  # >= 5 clients: all used
    PartitionConfig(scheme=Partition.SIZE_SKEW, num_clients=7, size_growth=SizeGrowth.SQUARE),
    PartitionConfig(scheme=Partition.NATURAL, num_clients=0),
    PartitionConfig(scheme=Partition.NATURAL, num_clients=3),
]


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: f"{c.scheme.value}-{c.num_clients}")
def test_schemes_cover_the_pool_with_disjoint_shards(cfg):
    pool = _pool()
    shards = _split(pool, cfg)
    assert len(shards) == (cfg.num_clients or GROUPS)
    assert len(_assert_disjoint_sorted(shards, N)) == N


def test_shard_drops_only_the_remainder_of_equal_shards(caplog):
    """flwr's ShardPartitioner cuts floor(n / (k x s)) examples per shard: n mod (k x s) examples go nowhere."""
    pool = _pool()
    with caplog.at_level(logging.WARNING, logger="privfed.data.partition"):
        shards = _split(pool, PartitionConfig(scheme=Partition.SHARD, num_clients=7, shards_per_client=2))
    joined = _assert_disjoint_sorted(shards, N)
    assert {len(s) for s in shards} == {2 * (N // 14)}
    assert N - len(joined) == N % 14 and f"left {N % 14} of {N}" in caplog.text


def test_pathological_with_fewer_clients_than_classes_drops_the_unheld_classes():
    pool = _pool()
    shards = _split(pool, PartitionConfig(scheme=Partition.PATHOLOGICAL, num_clients=2, classes_per_client=1))
    held = {int(x) for s in shards for x in _labels_of(pool, s)}
    assert len(held) == 2
    assert len(_assert_disjoint_sorted(shards, N)) == sum(1 for y in pool.labels if y in held)


RANDOM_SCHEMES = [c for c in SCHEMES if c.scheme is not Partition.NATURAL] + [
    PartitionConfig(scheme=Partition.SHARD, num_clients=7, shards_per_client=2)]


@pytest.mark.parametrize("cfg", RANDOM_SCHEMES, ids=lambda c: c.scheme.value)
def test_a_seed_reproduces_the_split_and_another_changes_it(cfg):
    pool = _pool()
    first, again, other = (_split(pool, cfg, seed) for seed in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@given(n=st.integers(10, 300), k=st.integers(1, 10), seed=st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_iid_is_a_balanced_partition(n, k, seed):
    shards = _split(_pool(n), PartitionConfig(scheme=Partition.IID, num_clients=k), seed)
    assert len(_assert_disjoint_sorted(shards, n)) == n
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dirichlet_gives_every_client_min_examples():
    pool = _pool()
    cfg = PartitionConfig(scheme=Partition.DIRICHLET, num_clients=5, alpha=0.3, min_examples=60)
    for seed in range(5):
        assert min(map(len, _split(pool, cfg, seed))) >= 60


def _mean_distance_from_pool(pool: TextDataset, shards: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the pool's: 0 = no label skew."""
    overall = np.bincount(pool.labels, minlength=CLASSES) / len(pool)
    return float(np.mean([0.5 * np.abs(np.bincount(_labels_of(pool, s), minlength=CLASSES) / len(s) - overall).sum()
                          for s in shards]))


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    pool = _pool()
    configs = [PartitionConfig(scheme=Partition.DIRICHLET, num_clients=5, alpha=alpha, min_examples=1)
               for alpha in (100.0, 1.0, 0.1)]
    skew = [np.mean([_mean_distance_from_pool(pool, _split(pool, cfg, seed)) for seed in range(5)]) for cfg in configs]
    assert skew == sorted(skew)


@pytest.mark.parametrize("per_client", [1, 2, 3])
def test_pathological_clients_hold_at_most_classes_per_client(per_client):
    pool = _pool()
    cfg = PartitionConfig(scheme=Partition.PATHOLOGICAL, num_clients=6, classes_per_client=per_client)
    shards = _split(pool, cfg)
    assert all(len(set(_labels_of(pool, s).tolist())) <= per_client for s in shards)


def test_size_skew_sizes_grow_with_the_client_index_and_faster_for_faster_growth():
    pool = _pool()
    ratios = []
    for growth in (SizeGrowth.LINEAR, SizeGrowth.SQUARE, SizeGrowth.EXPONENTIAL):
        cfg = PartitionConfig(scheme=Partition.SIZE_SKEW, num_clients=5, size_growth=growth)
        sizes = [len(s) for s in _split(pool, cfg)]
        assert sizes == sorted(sizes) and len(set(sizes)) == 5 and sum(sizes) == N
        ratios.append(sizes[-1] / sizes[0])
    assert ratios == sorted(ratios)


@pytest.mark.parametrize("num_clients", [0, GROUPS])
def test_natural_gives_one_client_per_group_largest_first_or_in_the_given_order(num_clients):
    pool = _pool()
    cfg = PartitionConfig(scheme=Partition.NATURAL, num_clients=num_clients)
    shards = _split(pool, cfg)
    counts = Counter(pool.groups)
    assert [{pool.groups[i] for i in s} for s in shards] == [{g} for g in sorted(counts, key=lambda g: (-counts[g], g))]
    assert sum(map(len, shards)) == len(pool)
    order = tuple(f"g{g}" for g in reversed(range(GROUPS)))  # data.clients' ids, as the config lists them
    given = partition(pool, cfg, np.random.default_rng(0), client_order=order)
    assert [{pool.groups[i] for i in s} for s in given] == [{g} for g in order]


def test_natural_packing_keeps_groups_whole_largest_first():
    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 3 + ["d"] * 2
    pool = _pool(len(groups), groups=groups)
    packed = _split(pool, PartitionConfig(scheme=Partition.NATURAL, num_clients=2))
    assert len(_assert_disjoint_sorted(packed, len(groups))) == len(groups)
    assert [sorted({groups[i] for i in s}) for s in packed] == [["a", "d"], ["b", "c"]]  # a, b, c, then d: 12 + 10


ERRORS = [  # (what is asked, the key the error names, what its message says)
    pytest.param(PartitionConfig(scheme=Partition.IID, num_clients=N + 1), "partition.num_clients",
                 "only 1003 training examples", id="more-clients-than-examples"),
    pytest.param(PartitionConfig(scheme=Partition.DIRICHLET, num_clients=5, min_examples=300),
                 "partition.num_clients", "lower partition.min_examples", id="dirichlet-minimum-beyond-the-pool"),
    pytest.param(PartitionConfig(scheme=Partition.DIRICHLET, num_clients=5, alpha=0.01, min_examples=150),
                 "partition.alpha", "raise partition.alpha or lower partition.min_examples",
                 id="dirichlet-redraws-exhausted"),
    pytest.param(PartitionConfig(scheme=Partition.PATHOLOGICAL, classes_per_client=6),
                 "partition.classes_per_client", "only 5", id="more-classes-than-exist"),
    pytest.param(PartitionConfig(scheme=Partition.PATHOLOGICAL, num_clients=900, classes_per_client=2),
                 "partition.classes_per_client", "flwr-datasets: Label", id="flwr-pathological-refusal"),
    pytest.param(PartitionConfig(scheme=Partition.SHARD, num_clients=400, shards_per_client=3),
                 "partition.shards_per_client", "pool has 1003", id="more-shards-than-examples"),
    pytest.param(PartitionConfig(scheme=Partition.SIZE_SKEW, num_clients=12, size_growth=SizeGrowth.EXPONENTIAL),
                 "partition.num_clients", "slower partition.size_growth", id="size-skew-empty-client"),
    pytest.param(PartitionConfig(scheme=Partition.NATURAL, num_clients=GROUPS + 1), "partition.num_clients",
                 "only 7 natural groups", id="natural-more-clients-than-groups"),
]


@pytest.mark.parametrize(("cfg", "key", "says"), ERRORS)
def test_impossible_splits_raise_one_line_config_errors(cfg, key, says):
    with pytest.raises(ConfigError) as raised:
        _split(_pool(), cfg)
    assert raised.value.key == key and says in raised.value.problem and "\n" not in str(raised.value)


@pytest.mark.parametrize("scheme", [Partition.DIRICHLET, Partition.PATHOLOGICAL, Partition.SHARD])
def test_label_skew_refuses_an_unlabelled_pool(scheme):
    with pytest.raises(ConfigError, match="partition.scheme: .* the data has none"):
        _split(_pool(labelled=False), PartitionConfig(scheme=scheme))


def test_describe_and_natural_owners():
    groups = ["a", "a", "b", "c"]
    pool = TextDataset(examples=("w", "x", "y", "z"), labels=(0, 1, 1, 1), groups=tuple(groups),
                       label_names=("neg", "pos"))
    shards = [np.array([0, 1]), np.array([2, 3])]
    assert describe(pool, shards) == [
        {"client": 0, "examples": 2, "label_histogram": {"neg": 1, "pos": 1}, "groups": {"a": 2}},
        {"client": 1, "examples": 2, "label_histogram": {"neg": 0, "pos": 2}, "groups": {"b": 1, "c": 1}}]
    assert natural_owners(pool, shards, ("c", "a", "zz")).tolist() == [1, 0, -1]
