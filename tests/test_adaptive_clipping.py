"""Adaptive clipping under distributed DP: the count is really noised inside the secure sum, its noise is accounted
with the update's (cross-checked against dp_accounting and Andrew et al.'s formula), the clip norm tracks its
quantile, and a noisy sum that wraps is caught."""
from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest

from privfed.aggregation.secagg import SecAggBackend
from privfed.config import Aggregation, AggregationConfig
from privfed.errors import ConfigError
from privfed.privacy.adaptive_clip import STATE_KEY, AdaptiveClip
from privfed.privacy.distributed import DistributedDp, SkellamShare, skellam_tail, user_epsilon, wrap_slack

SECAGG = AggregationConfig(method=Aggregation.SECAGG, clip_range=1.0)


def test_the_count_shares_the_noise_as_andrew_et_al_compose_it():
    """sigma_b = r z clients on the count, z r / sqrt(r^2 - 1) on the update, and together exactly the joint
    mechanism's z: z^-2 = z_update^-2 + sigma_b^-2 (Andrew et al.'s composition, zero-out form)."""
    for r in (1.5, 3.0, 10.0):
        share = SkellamShare(1.3, 0.5, 1e-6, 10_000, 4, count_noise=r)
        assert share.count_noise_std == pytest.approx(r * 1.3, rel=1e-4)  # s_b is rounded to whole steps
        assert share.update_noise_multiplier == pytest.approx(1.3 * r / math.sqrt(r * r - 1), rel=1e-4)
        assert share.update_noise_multiplier ** -2 + share.count_noise_std ** -2 == pytest.approx(1.3 ** -2)
        assert share.l2_sensitivity > share.update_l2_sensitivity  # the bit is in the sensitivity


def test_user_epsilon_with_adaptive_clipping_matches_dp_accountings_gaussian():
    """At a fine step Skellam tends to the Gaussian: R rounds of the joint mechanism with noise multiplier z are
    worth R Gaussian mechanisms of z in Google's dp_accounting, whatever the clip norm of each round."""
    rounds, z = 5, 1.1
    events = [SkellamShare(z, clip, 1e-7, 1000, 3, count_noise=3.0).event(0, r)
              for r, clip in enumerate([0.5, 0.3, 0.2, 0.25, 0.9], start=1)]
    ours = user_epsilon(events, 1e-5)
    google = dp_accounting.rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)).get_epsilon(1e-5)
    assert google * 0.97 <= ours <= google * 1.05  # RDP order grids differ by a few per cent; never far below
    fixed = user_epsilon([SkellamShare(z, 0.5, 1e-7, 1000, 3).event(0, r) for r in range(rounds)], 1e-5)
    assert ours == pytest.approx(fixed, rel=1e-3)  # the count costs no extra epsilon: the update's noise pays


def _backend(*, max_wrap_probability=1e-9, clients=5, length=65, word_bits=0, count_noise=3.0, clip=0.05):
    cfg = AggregationConfig(method=Aggregation.SECAGG, clip_range=1.0, word_bits=word_bits,
                            max_wrap_probability=max_wrap_probability)
    return SecAggBackend(cfg, clients, length, DistributedDp(1.0, clip, count_noise, 1.0 if count_noise else 0.0))


def test_the_noised_count_arrives_and_its_noise_is_really_added():
    backend = _backend()
    rng = np.random.default_rng(0)
    d = backend.vector_length - 1
    norms = [0.01, 0.02, 0.04, 0.2, 1.0]  # three within the clip 0.05, two beyond it
    errors = []
    for r in range(60):
        updates = {}
        for c, norm in enumerate(norms):
            direction = rng.normal(size=d)
            updates[c] = np.append(direction / np.linalg.norm(direction) * norm, 1.0)
        outcome = backend.aggregate(r, updates)
        assert outcome.total[-1] == 5.0 and outcome.total.shape == (d + 1,)
        errors.append(outcome.under_clip - 3)
    share = outcome.noise
    assert share.count_steps > 0 and outcome.details["count_noise_std"] == pytest.approx(share.count_noise_std)
    # 5 shares were summed, each for threshold t = 4: the count's noise is sqrt(5/4) of the guaranteed r z
    expected = share.count_noise_std * math.sqrt(5 / share.min_clients)
    assert abs(np.mean(errors)) < 4 * expected / math.sqrt(len(errors))
    assert 0.7 < np.std(errors) / expected < 1.3  # not skipped, not doubled
    assert expected > 2  # r z = 3 clients of noise: a server learns little from one round's count


def test_updates_are_clipped_to_the_norm_setup_carries():
    backend = _backend(clip=0.05)
    backend.set_update_clip(0.2)
    d = backend.vector_length - 1
    big = np.append(np.full(d, 1.0 / math.sqrt(d)), 1.0)  # norm 1: clipped to 0.2
    outcome = backend.aggregate(1, dict.fromkeys(range(5), big))
    assert outcome.details["update_clip"] == 0.2
    noise = math.sqrt(2 * outcome.noise.client_mu * 5) * backend.encoding.step
    assert np.linalg.norm(outcome.total[:-1] / 5) == pytest.approx(0.2, abs=4 * noise * math.sqrt(d) / 5)
    with pytest.raises(ValueError, match="outside"):
        backend.set_update_clip(2.0)  # beyond max_update_clip, for which the words have no noise headroom


def test_the_clip_follows_its_quantile():
    rng = np.random.default_rng(1)
    norms = rng.lognormal(mean=-2.0, sigma=0.5, size=10_000)
    target = float(np.quantile(norms, 0.7))
    clip = AdaptiveClip(quantile=0.7, learning_rate=0.2, lowest=1e-4, highest=1.0, clip=1.0)
    for _ in range(300):
        batch = rng.choice(norms, size=50)
        clip.observe(float(np.sum(batch <= clip.clip)) + rng.normal(0, 3.0), 50)
    assert clip.clip == pytest.approx(target, rel=0.15)
    clip.observe(0.0, 50)  # nobody under: the clip grows, never past its ceiling
    assert clip.clip <= 1.0
    assert AdaptiveClip(0.5, 50.0, 0.01, 1.0, 0.02).observe(50, 50) == 0.01  # nor under its floor


def test_a_noisy_sum_that_wraps_is_caught_and_never_applied():
    """A client whose values sit at the top of an 8-bit word pushes the noisy sum around 2^8: the server's range
    check skips the round instead of applying values off by 2^k, while honest rounds pass it."""
    backend = _backend(word_bits=12, length=129, count_noise=0.0, clip=0.5)
    d = backend.vector_length - 1
    honest = backend.aggregate(1, {c: np.append(np.zeros(d), 1.0) for c in range(5)})
    assert honest.total is not None and honest.details["wrap_probability"] <= 1e-9
    clients = {c: backend.client_half(2, c) for c in range(5)}
    top = 2 ** (backend.encoding.word_bits - 1) - 1
    for c, half in clients.items():
        ints = np.zeros(d + 1, dtype=np.int64)
        ints[-1] = 1
        if c == 0:
            ints[:64] = top  # past any honest value: the sum of these and the noise wraps or leaves the bound
        half.set_quantised(ints, None)
    server = backend.server_half(2, sorted(clients))
    outgoing = server.open()
    while outgoing:
        for c, raw in outgoing.items():
            server.receive(c, clients[c].handle(raw))
        outgoing = server.advance()
    outcome = server.outcome()
    assert outcome.total is None and outcome.contributors == tuple(range(5))  # decoded, so the noise was spent
    assert "wrapped around 2^12" in outcome.details["abort_reason"]


def test_wrap_slack_is_the_least_that_meets_the_bound():
    mu, coordinates = 400.0, 1000
    slack = wrap_slack(mu, coordinates, 1e-9)
    assert 2 * coordinates * skellam_tail(mu, slack + 1) <= 1e-9 < 2 * coordinates * skellam_tail(mu, slack)
    from scipy.stats import skellam
    assert skellam.sf(slack, mu, mu) <= skellam_tail(mu, slack + 1)  # Chernoff really bounds the tail


def test_adaptive_clipping_runs_end_to_end_and_resumes_its_clip(tiny_classifier, tmp_path):
    from privfed.engines.inprocess import run
    from privfed.results import RunDirectory

    cfg = tiny_classifier("aggregation=secagg", "privacy.distributed_noise=0.7", "privacy.update_clip=0.5",
                          "privacy.clip_quantile=0.5", "privacy.clip_learning_rate=1.0",
                          "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0")
    res = run(cfg, tmp_path / "r", progress=False)
    rounds = res["rounds"]
    assert rounds[0]["aggregation"]["update_clip"] == 0.5 and "under_clip" in rounds[0]["aggregation"]
    assert rounds[1]["aggregation"]["update_clip"] == rounds[0]["next_update_clip"] != 0.5  # the server moved it
    assert 0 < res["final"]["user_epsilon"] < math.inf
    events = [json.loads(line) for line in (tmp_path / "r" / "ledger.jsonl").read_text().splitlines()]
    assert all(e["count_steps"] > 0 for e in events if e["kind"] == "distributed_dp")
    state = RunDirectory(tmp_path / "r").load_checkpoint()
    assert float(state.strategy_state[STATE_KEY][0]) == rounds[-1]["next_update_clip"]
    assert res["privacy"]["adaptive_clipping"]["quantile"] == 0.5


def test_adaptive_clipping_settings_are_checked(tiny_classifier):
    with pytest.raises(ConfigError, match="privacy.clip_quantile.*distributed_noise"):
        tiny_classifier("aggregation=secagg", "privacy.clip_quantile=0.5")
    with pytest.raises(ConfigError, match="privacy.clip_count_noise.*> 1"):
        tiny_classifier("aggregation=secagg", "privacy.distributed_noise=1", "privacy.clip_quantile=0.5",
                        "privacy.clip_count_noise=1")
    with pytest.raises(ConfigError, match="aggregation.max_wrap_probability"):
        tiny_classifier("aggregation=secagg", "aggregation.max_wrap_probability=0")


def _tampered_setup(outgoing: dict[int, bytes], client: int, **changes) -> dict[int, bytes]:
    """The server's SETUP messages with one client's body changed (an active server showing it another round)."""
    from privfed.secure.messages import SERVER, Message, decode, encode

    message = decode(outgoing[client], max_bytes=1 << 20, session=None, round_idx=1)
    body = {**message.body, **changes}
    return {**outgoing, client: encode(Message(message.type, message.session, message.round, SERVER, body))}


def test_a_server_showing_one_client_another_clip_is_caught_by_the_consistency_check():
    """Sending the target the largest S and everyone else a tiny one would shrink the others' noise shares; under
    the consistency check each client signs SETUP's digest with its keys, so every peer's check fails."""
    import msgpack

    from privfed.secure.messages import ProtocolError

    cfg = AggregationConfig(method=Aggregation.SECAGG, clip_range=1.0, consistency_check=True)
    backend = SecAggBackend(cfg, 4, 9, DistributedDp(1.0, 0.5, 3.0, 1.0))
    clients = {c: backend.client_half(1, c) for c in range(4)}
    for half in clients.values():
        half.set_update(np.append(np.full(8, 0.01), 1.0))
    server = backend.server_half(1, sorted(clients))
    outgoing = _tampered_setup(server.open(), 0, context=msgpack.packb({"update_clip": 1.0}))
    refused = []
    while outgoing:
        for c, raw in outgoing.items():
            try:
                server.receive(c, clients[c].handle(raw))
            except ProtocolError as err:
                refused.append((c, str(err)))
        outgoing = server.advance()
    assert server.outcome().total is None
    assert {c for c, _ in refused} == {0, 1, 2, 3} and all("signature" in why for _, why in refused)


def test_a_setup_with_a_lower_threshold_than_the_noise_is_calibrated_for_is_refused():
    from privfed.secure.messages import ProtocolError

    cfg = AggregationConfig(method=Aggregation.SECAGG, clip_range=1.0, threshold=0.8)
    backend = SecAggBackend(cfg, 5, 9, DistributedDp(1.0, 0.5))
    half = backend.client_half(1, 0)
    half.set_update(np.append(np.full(8, 0.01), 1.0))
    server = backend.server_half(1, list(range(5)))
    with pytest.raises(ProtocolError, match="threshold 3 is below the 4 shares"):
        half.handle(_tampered_setup(server.open(), 0, threshold=3)[0])


def test_the_wrap_bound_keeps_its_precision_for_huge_noise():
    """At mu ~ 1e18 (64-bit words, fine steps) the naive sqrt(1 + x^2) - 1 rounds to 0 and the slack comes out far
    too small, skipping honest rounds: the stable form agrees with the Gaussian tail there."""
    mu = 1e18
    slack = wrap_slack(mu, 20_000, 1e-9)
    sigma = math.sqrt(2 * mu)
    assert 7.5 < slack / sigma < 8.0  # Gaussian-like: sqrt(2 ln(2 x 20,000 / 1e-9)) = 7.9 sigma, never ~0
    assert skellam_tail(mu, 6 * sigma) == pytest.approx(math.exp(-18), rel=1e-3)
