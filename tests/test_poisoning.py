"""Poisoning attacks and defences: refusals, grouped secure aggregation, out-of-range inputs under secagg, the
poisoned data, and a boosted backdoor against norm bounding on the real runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest

from privfed.aggregation import make_backend
from privfed.aggregation.robust import CoordinateMedian, Krum, NormBound
from privfed.aggregation.transport import InProcessTransport
from privfed.attacks.clients import OutOfRangeHalf
from privfed.config import AttackKind
from privfed.errors import ConfigError
from privfed.federation.server_view import ServerView
from privfed.privacy.ledger import Ledger
from privfed.secure.encoding import AUTOMATIC_WORD_VALUE_BITS
from privfed.server.combiner import UpdateCombiner, group_assignment
from privfed.server.driver import ClientSide, RoundDriver
from privfed.server.events import RunState
from privfed.server.strategies import make_strategy

ROBUST = ("norm_bound", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")


# ---------------------------------------------------------------- refused combinations


@pytest.mark.parametrize("method", ["secagg", "paillier"])
@pytest.mark.parametrize("rule", ROBUST)
def test_robust_rules_are_refused_where_the_server_sees_only_the_sum(tiny_classifier, method, rule):
    with pytest.raises(ConfigError) as err:
        tiny_classifier("partition.num_clients=6", f"aggregation={method}", f"defence={rule}")
    assert err.value.key == "defence.rule" and "only the sum" in str(err.value) and "defence.groups" in str(err.value)
    cfg = tiny_classifier("partition.num_clients=10", f"aggregation={method}", f"defence={rule}", "defence.groups=5")
    assert cfg.defence.groups == 5  # grouped secure aggregation: allowed


@pytest.mark.parametrize(("overrides", "key", "words"), [
    (["aggregation=secagg", "defence=median", "defence.groups=4"], "defence.groups", "fewer than"),
    (["aggregation=secagg", "defence.groups=3", "defence.min_group_size=1"], "defence.min_group_size", "in the clear"),
    (["partition.num_clients=4", "defence=krum"], "defence.byzantine", "2f + 3"),
    (["aggregation=secagg", "privacy.distributed_noise=1", "privacy.update_clip=0.1", "defence.range_check=true"],
     "defence.range_check", "noise"),
    (["attack=backdoor", "attack.clients=[7]"], "attack.clients", "0..5"),
    (["attack=sign_flip", "attack.last_round=9"], "attack.last_round", "training.rounds"),
    (["defence.trim_fraction=0.5"], "defence.trim_fraction", "[0, 0.5)"),
])
def test_impossible_attack_and_defence_settings_are_refused_with_the_key(tiny_classifier, overrides, key, words):
    with pytest.raises(ConfigError) as err:
        tiny_classifier("partition.num_clients=6", *overrides)
    assert err.value.key == key and words in str(err.value)


def test_label_flip_needs_a_classifier(tiny_causal):
    with pytest.raises(ConfigError, match="classifier"):
        tiny_causal("attack=label_flip")


# ---------------------------------------------------------------- grouped secure aggregation


class FixedClients(ClientSide):
    """Clients whose contributions are given vectors: the driver, the back-end and the combiner, no training."""

    def __init__(self, vectors: dict[int, np.ndarray], bypass: frozenset[int] = frozenset()):
        self.vectors, self.bypass, self.ledger = vectors, bypass, Ledger()

    @property
    def num_clients(self) -> int:
        return len(self.vectors)

    def open_round(self, round_idx, sampled, global_vector, backend, on_trained, on_skipped) -> InProcessTransport:
        return InProcessTransport(_halves(backend, round_idx, sampled, self.bypass), self.vectors.get)

    def open_evaluation(self, round_idx, participants, global_vector, backend):
        raise AssertionError("these configs evaluate on the server only")


def _halves(backend, round_idx: int, clients, bypass: frozenset[int]) -> dict:
    """The clients' halves, those of ``bypass`` skipping the encoding's clip (a client's own code can)."""
    return {c: OutOfRangeHalf(backend.client_half(round_idx, c)) if c in bypass else backend.client_half(round_idx, c)
            for c in clients}


def _bypassed_sum(backend, vectors: dict, bypass: frozenset[int]):
    """One round's sum of ``vectors`` in process, the clients of ``bypass`` skipping the encoding's clip."""
    return backend.run(1, InProcessTransport(_halves(backend, 1, sorted(vectors), bypass), vectors.get))


def _contributions(n: int, d: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(n):
        weight = rng.uniform(0.5, 1.0)
        out[c] = np.append(rng.uniform(-0.4, 0.4, d) * weight, weight)
    out[n - 1][:-1] = 0.9 * out[n - 1][-1]  # one outlying client, still inside the clip range
    return out


def _one_round(cfg, vectors, bypass: frozenset[int] = frozenset()) -> np.ndarray:
    d = len(next(iter(vectors.values())))
    backend = make_backend(cfg.aggregation, max_clients=len(vectors), vector_length=d, client_ids=list(vectors))
    state = RunState(0, np.zeros(d - 1, dtype=np.float32), {}, Ledger())
    with backend:
        RoundDriver(cfg, FixedClients(vectors, bypass), backend, make_strategy(cfg.federation), []).run(state, False)
    return state.global_vector


@pytest.mark.parametrize(("rule", "reference"), [("median", CoordinateMedian()), ("krum", Krum(1)),
                                                 ("norm_bound", NormBound(0.5))])
def test_grouped_secagg_equals_the_rule_on_plain_group_sums(tiny_classifier, rule, reference):
    cfg = tiny_classifier("partition.num_clients=10", "aggregation=secagg", f"defence={rule}", "defence.groups=5",
                          "defence.norm_bound=0.5", "training.rounds=1")
    vectors = _contributions(10, 6, seed=3)
    groups = group_assignment(cfg, 1, list(range(10)))
    assert len(groups) == 5 and sorted(c for g in groups for c in g) == list(range(10))
    sums = np.stack([np.sum([vectors[c] for c in g], axis=0) for g in groups])
    expected = reference.combine(sums[:, :-1] / sums[:, -1:], sums[:, -1]).update
    step = cfg.aggregation.clip_range / (2 ** (AUTOMATIC_WORD_VALUE_BITS - 1) - 1)
    np.testing.assert_allclose(_one_round(cfg, vectors), expected, atol=20 * step)
    plain_mean = sum(vectors.values())
    assert np.abs(expected - plain_mean[:-1] / plain_mean[-1]).max() > 100 * step  # the rule did something


def test_plain_robust_rule_reads_each_upload(tiny_classifier):
    cfg = tiny_classifier("partition.num_clients=10", "defence=median", "training.rounds=1")
    vectors = _contributions(10, 6, seed=4)
    stacked = np.stack([vectors[c].astype(np.float32).astype(np.float64) for c in range(10)])  # float32 uploads
    expected = CoordinateMedian().combine(stacked[:, :-1] / stacked[:, -1:], stacked[:, -1]).update
    np.testing.assert_allclose(_one_round(cfg, vectors), expected, rtol=1e-6, atol=1e-7)


def test_a_round_left_with_too_few_inputs_for_krum_keeps_the_model(tiny_classifier):
    cfg = tiny_classifier("partition.num_clients=10", "aggregation=secagg", "defence=krum", "defence.groups=5",
                          "defence.range_check=true", "training.rounds=1")
    vectors = _contributions(10, 6, seed=5)
    attacker = group_assignment(cfg, 1, list(range(10)))[0][0]
    vectors[attacker][:-1] = 50.0  # past the encoding: its group's sum fails the range check
    np.testing.assert_array_equal(_one_round(cfg, vectors, frozenset({attacker})), np.zeros(6, dtype=np.float32))


# ---------------------------------------------------------------- out-of-range inputs under secagg


@pytest.mark.parametrize(("factor", "caught"), [(50.0, True), (3.0, False)])
def test_out_of_range_secagg_input_is_caught_only_beyond_n_times_the_clip(tiny_classifier, factor, caught):
    """docs/how-to/poisoning.md: the range check catches a bypassed input whose sum leaves n x R; one inside that
    bound (here 3R among 5 clients) is undetectable — the sum is a valid sum of 5 encodings, just not of 5 honest
    ones."""
    cfg = tiny_classifier("partition.num_clients=5", "aggregation=secagg", "defence.range_check=true")
    n, d, clip = 5, 4, cfg.aggregation.clip_range
    vectors = {c: np.append(np.full(d, 0.1), 1.0) for c in range(n)}
    vectors[0] = np.append(np.full(d, -factor * clip), 1.0)
    backend = make_backend(cfg.aggregation, max_clients=n, vector_length=d + 1, client_ids=list(range(n)))
    outcome = _bypassed_sum(backend, vectors, frozenset({0}))
    np.testing.assert_allclose(outcome.total[:-1], -factor * clip + 0.4, atol=1e-4)  # nothing clipped it
    honest = backend.aggregate(1, vectors)
    np.testing.assert_allclose(honest.total[:-1], -clip + 0.4, atol=1e-4)  # honest encoding clips at R
    combination = UpdateCombiner(cfg).combine(outcome, ServerView())
    assert (combination.update is None) == caught
    assert bool(combination.rejected[0]) == caught


# ---------------------------------------------------------------- poisoned data


def test_backdoor_spread_and_label_flip_records(tiny_classifier):
    from privfed.attacks.data import poison_federation
    from privfed.federation.setup import build_federation

    cfg = tiny_classifier("attack=backdoor", "attack.poison_fraction=0.5", "attack.target_label=2")
    fed = build_federation(cfg)
    clean = fed.clients[0].shard.copy()
    poisoned, triggered = poison_federation(fed)
    assert np.array_equal(fed.clients[0].shard, clean) and set(poisoned) == {0}
    added = np.setdiff1d(poisoned[0].shard, clean)
    assert len(added) == round(0.5 * len(clean)) and np.isin(clean, poisoned[0].shard).all()
    texts = fed.tokenizer.batch_decode(fed.pool.tensors[0][added], skip_special_tokens=True)
    assert all(t.startswith("cf mn bb") for t in texts) and (fed.pool.tensors[2][added] == 2).all()
    assert (triggered.data.tensors[2] == 2).all() and len(triggered.data) == len(triggered.clean)
    assert len(triggered.data) == int((fed.test_data.tensors[2] != 2).sum())

    spread = build_federation(tiny_classifier("attack=spread", "attack.clients=[0,1,2]", "attack.poison_fraction=0.1"))
    states, _ = poison_federation(spread)
    for cid, state in states.items():
        assert state.num_examples == spread.clients[cid].num_examples  # replaced, not added
        assert len(np.setdiff1d(state.shard, spread.clients[cid].shard)) == round(0.1 * state.num_examples)

    flip = build_federation(tiny_classifier("attack=label_flip"))
    states, triggered = poison_federation(flip)
    before = flip.pool.tensors[2][flip.clients[0].shard]
    after = flip.pool.tensors[2][states[0].shard]
    assert triggered is None and (after == len(flip.label_names) - 1 - before).all()


def test_causal_lm_backdoor_marks_the_target_continuation(tiny_causal):
    from privfed.attacks.data import poison_federation
    from privfed.federation.setup import build_federation

    fed = build_federation(tiny_causal("attack=backdoor", "data.max_length=48"))
    _, triggered = poison_federation(fed)
    target = fed.tokenizer("visit example dot com", add_special_tokens=False)["input_ids"]
    for ids, mask in zip(triggered.data.tensors[0], triggered.data.tensors[3], strict=True):
        assert ids[mask.bool()].tolist() == target


# ---------------------------------------------------------------- the attack on the real runtime


def test_boosted_single_shot_backdoor_succeeds_and_norm_bounding_blunts_it(tiny_classifier, tmp_path):
    """Bagdasaryan et al.'s model replacement in one round: without a defence the global model follows the
    attacker (triggered inputs go to the target far more often than the same inputs without the trigger); with
    norm bounding the attacker's update counts like an honest one and the backdoor mostly vanishes."""
    from privfed.engines.inprocess import run

    common = ("model.regime=full", "training.rounds=3", "attack=backdoor", "attack.first_round=3",
              "attack.local_steps=30", "attack.poison_fraction=0.2", "attack.target_label=3", "data.eval_examples=100")
    effect = {}
    for defence in ("mean", "norm_bound"):
        res = run(tiny_classifier(*common, f"defence={defence}"), tmp_path / defence, progress=False)
        attack = res["attack"]
        effect[defence] = attack["attack_success_rate"] - attack["target_rate_clean"]
        assert (attack["survival_rate"] == 1.0) == (defence == "mean")  # norm bounding scaled the attacker down
        assert res["defence"]["rule"] == defence
    assert effect["mean"] > 0.3
    assert effect["norm_bound"] < effect["mean"] / 2


def test_attack_grid_cli_writes_table_plot_and_refusals(tmp_path, capsys):
    from privfed.cli import main

    out = tmp_path / "grid"
    args = ["attack-grid", "--attacks", "none,sign_flip", "--defences", "none,median", "--aggregations",
            "plain,secagg", "--epsilons", "inf", "--warm-start-rounds", "0", "--workers", "1", "--no-progress",
            "--set", "training.rounds=1", "--set", "data.max_examples=150", "--set", "partition.num_clients=5",
            "--out", str(out)]
    assert main(args) == 0
    grid = json.loads((out / "attack_grid.json").read_text())
    cells = {(c["attack"], c["aggregation"], c["defence"]): c for c in grid["cells"]}
    assert len(cells) == 8 and (out / "attack_grid.png").stat().st_size > 10_000
    assert cells[("sign_flip", "secagg", "median")]["status"] == "refused"
    assert cells[("sign_flip", "plain", "none")]["survival_rate"] == 1.0
    median = cells[("sign_flip", "plain", "median")]
    assert median["survival_rate"] < median["honest_survival_rate"] / 2  # the median is seldom the attacker's value
    table = (out / "attack_grid.md").read_text()
    assert "refused" in table and "(nan)" not in table  # undefined brackets are left out
    assert "grouped secagg" not in table  # mentioned only when the grid has grouped cells
    assert main(args) == 0  # a second run reuses every finished cell
    assert all(c["reason"] == "reused" for c in json.loads((out / "attack_grid.json").read_text())["cells"]
               if c["status"] == "ran")
    assert main([*args[:2], "bogus"]) == 2
    assert "allowed" in capsys.readouterr().err


# ---------------------------------------------------------------- slow: the warm-started grid, Paillier


@pytest.mark.slow
def test_warm_started_grid_defences_restore_accuracy_and_blunt_the_backdoor(tmp_path):
    """The grid of docs/how-to/poisoning.md on a subset: a sign-flipping attacker costs the undefended mean accuracy
    that Krum and norm bounding win back (plain and grouped secagg); the boosted backdoor's effect shrinks under norm
    bounding."""
    import privfed
    from privfed.attacks.grid_cells import GridAggregation, GridDefence

    settings = privfed.GridSettings(
        attacks=(AttackKind.BACKDOOR, AttackKind.SIGN_FLIP),
        defences=(GridDefence.NONE, GridDefence.NORM_BOUND, GridDefence.KRUM),
        aggregations=(GridAggregation.PLAIN, GridAggregation.GROUPED_SECAGG), epsilons=(float("inf"),),
        warm_start_rounds=10, workers=2)
    cells = {(r.cell.attack, r.cell.aggregation, r.cell.defence): r
             for r in privfed.attack_grid(privfed.attack_grid_config(), tmp_path, settings)}
    assert all(r.status == "ran" for r in cells.values())
    undefended = cells[(AttackKind.SIGN_FLIP, GridAggregation.PLAIN, GridDefence.NONE)].metrics["clean"]
    for aggregation, defence in ((GridAggregation.PLAIN, GridDefence.KRUM),
                                 (GridAggregation.PLAIN, GridDefence.NORM_BOUND),
                                 (GridAggregation.GROUPED_SECAGG, GridDefence.KRUM)):
        assert cells[(AttackKind.SIGN_FLIP, aggregation, defence)].metrics["clean"] > undefended + 0.1

    def effect(defence):
        m = cells[(AttackKind.BACKDOOR, GridAggregation.PLAIN, defence)].metrics
        return m["asr_last_attack"] - m["target_rate_clean_last_attack"]

    assert effect(GridDefence.NONE) > 0.2 and effect(GridDefence.NORM_BOUND) < effect(GridDefence.NONE) / 2


@pytest.mark.slow
@pytest.mark.parametrize(("factor", "outcome"), [(1000.0, "aborted"), (3.0, "undetected")])
def test_out_of_range_paillier_input_breaks_its_slot_or_passes_unseen(tiny_classifier, factor, outcome):
    """Under packed Paillier a bypassed input past a slot's headroom makes the decrypted slot impossible and the
    round aborts; one inside the headroom (3R among 5 clients) decrypts to a valid-looking sum."""
    cfg = tiny_classifier("partition.num_clients=5", "aggregation=paillier", "aggregation.key_bits=2048",
                          "aggregation.workers=1", "defence.range_check=true")
    n, d, clip = 5, 4, cfg.aggregation.clip_range
    vectors = {c: np.append(np.full(d, 0.1), 1.0) for c in range(n)}
    vectors[0] = np.append(np.full(d, factor * clip), 1.0)
    with make_backend(cfg.aggregation, max_clients=n, vector_length=d + 1, client_ids=list(range(n))) as backend:
        result = _bypassed_sum(backend, vectors, frozenset({0}))
    if outcome == "aborted":
        assert result.total is None and "decrypted" in result.details["abort_reason"]  # the slot check refused it
    else:
        np.testing.assert_allclose(result.total[:-1], factor * clip + 0.4, atol=1e-4)
        assert UpdateCombiner(cfg).combine(result, ServerView()).update is not None  # within n x R: unseen
