import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.data.partition import partition_dirichlet, partition_iid, partition_natural
from privfed.errors import ConfigError


def _assert_is_partition(shards, n):
    joined = np.concatenate(shards)
    assert len(joined) == n and len(np.unique(joined)) == n


@given(n=st.integers(10, 500), k=st.integers(1, 10), seed=st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_iid_is_a_balanced_partition(n, k, seed):
    shards = partition_iid(n, k, np.random.default_rng(seed))
    _assert_is_partition(shards, n)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _mean_label_entropy(shards, labels):
    ent = []
    for s in shards:
        p = np.bincount(labels[s], minlength=5) / len(s)
        p = p[p > 0]
        ent.append(-(p * np.log(p)).sum())
    return float(np.mean(ent))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(5), 200)
    rng = np.random.default_rng(0)
    skewed = partition_dirichlet(labels, 5, 0.1, rng, min_examples=5)
    mild = partition_dirichlet(labels, 5, 100.0, rng, min_examples=5)
    _assert_is_partition(skewed, len(labels))
    _assert_is_partition(mild, len(labels))
    assert _mean_label_entropy(skewed, labels) < 0.8 * _mean_label_entropy(mild, labels)
    assert min(map(len, skewed)) >= 5


def test_dirichlet_rejects_impossible_minimum():
    with pytest.raises(ConfigError, match="num_clients"):
        partition_dirichlet(np.zeros(10, dtype=int), 5, 1.0, np.random.default_rng(0), min_examples=3)


def test_natural_keeps_groups_whole():
    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 3 + ["d"] * 2
    one_each = partition_natural(groups, 0)
    assert len(one_each) == 4
    packed = partition_natural(groups, 2)
    _assert_is_partition(packed, len(groups))
    for shard in packed:
        for g in {groups[i] for i in shard}:
            members = {i for i, x in enumerate(groups) if x == g}
            assert members <= set(shard.tolist())  # a group never straddles two clients
    with pytest.raises(ConfigError, match="natural groups"):
        partition_natural(groups, 5)
