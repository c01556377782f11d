"""Distributed DP: Skellam shares really are added, and the user-level epsilon is accounted from the ledger."""
from __future__ import annotations

import math

import msgpack
import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from privfed.aggregation.secagg import SecAggBackend
from privfed.config import Aggregation, AggregationConfig
from privfed.privacy.distributed import ORDERS, DistributedDp, SkellamShare, user_epsilon


def test_skellam_epsilon_tends_to_the_gaussian_one_for_large_mu():
    share = SkellamShare(noise_multiplier=1.2, update_clip=1.0, step=1e-6, dimension=10_000, min_clients=5)
    eps = user_epsilon([share.event(0, r) for r in range(4)], 1e-5)
    rdp = compute_rdp(q=1.0, noise_multiplier=1.2, steps=4, orders=ORDERS)
    gaussian, _ = get_privacy_spent(orders=ORDERS, rdp=list(rdp), delta=1e-5)
    assert gaussian <= eps <= gaussian * 1.01


def test_skellam_is_noisier_accounted_for_coarse_steps():
    fine = SkellamShare(1.0, 1.0, 1e-6, 1000, 3)
    coarse = SkellamShare(1.0, 1.0, 0.05, 1000, 3)  # rounding inflates the sensitivity: more noise needed
    assert coarse.l2_sensitivity / (1.0 / 0.05) > fine.l2_sensitivity / 1e6
    assert user_epsilon([], 1e-5) == 0.0
    assert math.isinf(user_epsilon([SkellamShare(0.0, 1.0, 1e-3, 10, 2).event(0, 1)], 1e-5))


def test_shares_sum_to_the_full_noise_and_are_not_skipped():
    cfg = AggregationConfig(method=Aggregation.SECAGG, clip_range=1.0, value_bits=20)
    d = 20_000
    agg = SecAggBackend(cfg, max_clients=4, vector_length=d + 1, distributed=DistributedDp(1.0, 0.5))
    contributions = {c: np.append(np.zeros(d), 1.0) for c in range(4)}
    outcome = agg.aggregate(1, contributions)
    noise = outcome.total[:-1]
    share = outcome.noise
    assert outcome.total[-1] == 4.0  # the count coordinate stays exact
    expected_std = math.sqrt(2 * share.client_mu * 4) * agg.encoding.step  # 4 survivors, each Sk(mu_c)
    assert abs(noise.std() / expected_std - 1) < 0.05
    assert share.noise_multiplier * share.l2_sensitivity * agg.encoding.step <= expected_std * 1.0001
    assert abs(noise.mean()) < 5 * expected_std / math.sqrt(d)


def test_conditional_rounding_enforces_the_tighter_sensitivity():
    """At few bits sqrt(d) rivals S / step: DDGauss's conditional rounding bound is well below S / step + sqrt(d),
    and every client's integer update, rounded again until it fits, is within it — the bound the noise uses."""
    from privfed.secure.secagg import RoundParameters

    cfg = AggregationConfig(method=Aggregation.SECAGG, clip_range=0.05, word_bits=12, rotation=True)
    d = 4096
    agg = SecAggBackend(cfg, max_clients=5, vector_length=d + 1, distributed=DistributedDp(0.5, 0.5))
    share = agg.noise_share(5)
    plain = share.update_clip / share.step + math.sqrt(d)
    assert share.update_l2_sensitivity < 0.9 * plain  # 312 steps instead of 374 here
    params = RoundParameters(b"\x01" * 16, 1, tuple(range(5)), 0, 3, cfg.word_bits, agg.wire_length,
                             context=msgpack.packb({"update_clip": 0.5}))
    rng = np.random.default_rng(0)
    for _ in range(20):
        update = rng.normal(size=d)
        ints, _ = agg.encode_at_setup(np.append(update / np.linalg.norm(update) * 0.5, 1.0), params, share)
        assert np.linalg.norm(ints[:-1].astype(float)) <= share.update_l2_sensitivity
        assert ints[-1] == 2 ** (agg.encoding.value_bits - 1) - 1  # the weight, 1, in clip-range units
