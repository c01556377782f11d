"""Fair privacy-utility sweeps: the tuner's grammar and selection, seeds and intervals, the validation split, and
the DP fine-tuning recipe's options (FFA-LoRA, DP-AdamBC, per-client data caps)."""
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_CLASSIFIER, make_config
from scipy import stats
from torch import nn

import privfed
from privfed.errors import ConfigError
from privfed.federation.setup import build_federation, hold_out_validation
from privfed.models.regimes import trainable_parameters
from privfed.privacy.dp_adam import DpAdamBC
from privfed.report.intervals import Interval
from privfed.runners.sweep import Point, Sweep, SweepPlan, load_sweep, plan_runs, select, summarize
from privfed.runners.tuning import best_index, check_axes, parse_tune, trials

FAST = ("model.regime=lora", "training.rounds=1", "training.local_steps=1", "data.eval_examples=16",
        "data.max_examples=160")


# ---------------------------------------------------------------- the tuner's grammar


def test_tune_axes_parse_single_and_joint_keys():
    lr = parse_tune("training.lr=0.005,0.02")
    assert lr.keys == ("training.lr",) and lr.values == ((0.005,), (0.02,))
    joint = parse_tune("training.batch_size/training.local_steps=32/8,64/4")
    assert joint.values == ((32, 8), (64, 4))
    clip = parse_tune("privacy.max_grad_norm=0.5,1")
    assert trials([lr, joint, clip]) == [
        {"training.lr": a, "training.batch_size": b, "training.local_steps": s, "privacy.max_grad_norm": c}
        for a in (0.005, 0.02) for b, s in ((32, 8), (64, 4)) for c in (0.5, 1)]
    assert len(trials([lr, clip], private=False)) == 2  # clipping means nothing without DP: run once
    assert trials([]) == [{}]


@pytest.mark.parametrize("text, words", [
    ("training.lr", "KEY=V1,V2"), ("training.lr=", "empty value list"), ("training.lr=0.1,,0.2", "empty value"),
    ("training.lr=0.1,0.1", "repeats a value"), ("seed=1,2", "set by the sweep"),
    ("privacy.epsilon=1,2", "set by the sweep"), ("training.batch_size/training.local_steps=32", "2 keys"),
])
def test_bad_tune_is_a_config_error_naming_the_flag(text, words):
    with pytest.raises(ConfigError, match=words) as err:
        parse_tune(text)
    assert err.value.key == "--tune"


def test_every_trial_is_validated_before_anything_runs(tiny_classifier):
    base = tiny_classifier(*FAST)
    with pytest.raises(ConfigError, match="training.lrr: unknown key") as err:
        check_axes(base, [parse_tune("training.lrr=0.1,0.2")])
    assert err.value.key == "--tune"
    with pytest.raises(ConfigError, match="training.lr: must be > 0"):
        check_axes(base, [parse_tune("training.lr=0.1,-1")])
    with pytest.raises(ConfigError, match="tuned twice"):
        check_axes(base, [parse_tune("training.lr=0.1,0.2"), parse_tune("training.lr/training.batch_size=0.1/8")])
    with pytest.raises(ConfigError, match="--seeds"):
        SweepPlan((8.0,), seeds=0)


def test_selection_prefers_the_better_score_and_never_nan():
    assert best_index([0.7, math.nan, 0.9, 0.9], "eval_accuracy") == 2  # ties: the first
    assert best_index([30.0, 12.0, math.nan], "eval_perplexity") == 1
    with pytest.raises(ValueError):
        best_index([math.nan], "eval_accuracy")


def test_interval_is_students_t():
    values = [0.91, 0.88, 0.90]
    found = Interval.of(values)
    sem = np.std(values, ddof=1) / math.sqrt(3)
    assert found.mean == pytest.approx(np.mean(values))
    assert found.half_width == pytest.approx(stats.t.ppf(0.975, 2) * sem)
    assert found.text() == f"{np.mean(values):.3f} ± {found.half_width:.3f}"
    one = Interval.of([0.5])
    assert math.isnan(one.half_width) and one.text() == "0.500" and one.low == one.high == 0.5


def _fake_run(eps: float, quality: float, seed: int) -> dict:
    return {"config": {"name": f"x-eps{eps}-s{seed}", "seed": seed, "data": {}, "privacy": {"epsilon": str(eps)}},
            "seconds": 1.0, "rounds": [],
            "final": {"eval_accuracy": quality, "epsilon": eps, "delta": 1e-5},
            "privacy": {"target_epsilon": None if math.isinf(eps) else eps, "mode": "off" if math.isinf(eps) else "t"}}


def test_selection_keeps_only_its_own_runs_from_a_shared_pool():
    """make_tables runs a whole study in one pool: each sweep's report must hold its runs, not its neighbours'."""
    base = make_config(TINY_CLASSIFIER, *FAST)
    plan = SweepPlan((8.0,), seeds=2)
    specs = plan_runs(base, plan)
    outcomes = {s.config.name: _fake_run(8.0, 0.9, s.seed_index) for s in specs}
    outcomes |= {"other-eps8-s0": _fake_run(8.0, 0.1, 0), "other-eps8-s1": "crashed"}
    found = select("x", plan, specs, outcomes)
    assert len(found.runs) == 2 and not found.failed
    assert found.points[0].quality.mean == pytest.approx(0.9)


def test_a_private_point_above_the_non_private_one_is_flagged():
    private = Point(8.0, {}, tuple(_fake_run(8.0, q, i) for i, q in enumerate((0.93, 0.94, 0.935))))
    public = Point(math.inf, {}, tuple(_fake_run(math.inf, q, i) for i, q in enumerate((0.80, 0.81, 0.805))))
    flagged = Sweep("x", SweepPlan((8.0, math.inf), seeds=3), (private, public)).anomalies()
    assert len(flagged) == 1 and "under-tuned" in flagged[0]
    fair = Point(math.inf, {}, tuple(_fake_run(math.inf, q, i) for i, q in enumerate((0.95, 0.96, 0.955))))
    assert Sweep("x", SweepPlan((8.0, math.inf), seeds=3), (private, fair)).anomalies() == []


# ---------------------------------------------------------------- the data: validation split, split seed, caps


def test_validation_split_comes_from_the_clients_and_never_from_the_test_set(tiny_classifier):
    plain = build_federation(tiny_classifier("data.max_examples=200"))
    held = build_federation(tiny_classifier("data.max_examples=200", "data.validation_fraction=0.25"))
    before = {c.id: set(c.shard.tolist()) for c in plain.clients}
    val_ids = {tuple(row) for row in held.validation_data.tensors[0].tolist()}
    test_ids = {tuple(row) for row in held.test_data.tensors[0].tolist()}
    assert held.test_data.tensors[0].equal(plain.test_data.tensors[0])  # the test set is untouched
    assert not val_ids & test_ids
    for client in held.clients:
        kept = set(client.shard.tolist())
        assert kept < before[client.id]  # carved from its own share
        assert len(before[client.id]) - len(kept) == max(1, round(0.25 * len(before[client.id])))
    held_out = set().union(*before.values()) - set().union(*(set(c.shard.tolist()) for c in held.clients))
    assert len(held.validation_data) == len(held_out)
    with pytest.raises(ConfigError, match="client 1 holds 1 training example") as err:
        hold_out_validation([np.arange(10), np.arange(10, 11)], 0.5, np.random.default_rng(0))
    assert err.value.key == "data.validation_fraction"


def test_split_seed_fixes_the_split_while_the_run_seed_varies(tiny_classifier):
    def shards(*o):
        return [c.shard.tolist() for c in build_federation(tiny_classifier("data.max_examples=200", *o)).clients]

    assert shards("seed=3", "data.split_seed=1") == shards("seed=4", "data.split_seed=1") == shards("seed=1")
    assert shards("seed=3") != shards("seed=4")
    capped = build_federation(tiny_classifier("data.max_examples=200", "partition.max_client_examples=20"))
    assert all(c.num_examples == 20 for c in capped.clients)


# ---------------------------------------------------------------- the recipe's options


def test_ffa_lora_trains_b_only_and_keeps_a_shared(tiny_classifier):
    fed = build_federation(tiny_classifier("model.regime=lora", "model.lora_freeze_a=true"))
    names = [n for n, _ in trainable_parameters(fed.runtime.model)]
    assert names and not any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    full = build_federation(tiny_classifier("model.regime=lora"))
    a_values = sum(p.numel() for n, p in full.runtime.model.named_parameters() if "lora_A" in n)
    assert full.num_trainable - fed.num_trainable == a_values  # the upload shrinks by A's values
    with pytest.raises(ConfigError, match="needs model.regime=lora"):
        tiny_classifier("model.regime=prompt", "model.lora_freeze_a=true")


def test_dp_adam_bc_is_adam_without_noise_and_removes_the_noise_variance():
    torch.manual_seed(0)
    grads = [torch.randn(50) for _ in range(4)]
    p_ref, p_bc = nn.Parameter(torch.zeros(50)), nn.Parameter(torch.zeros(50))
    ref = torch.optim.Adam([p_ref], lr=0.01, eps=0.0)
    bc = DpAdamBC([p_bc], lr=0.01, noise_variance=0.0, floor=1e-30)
    for g in grads:
        p_ref.grad, p_bc.grad = g.clone(), g.clone()
        ref.step()
        bc.step()
    assert torch.allclose(p_ref, p_bc, atol=1e-6)
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, 0.5, 0.1])
    DpAdamBC([p], lr=1.0, noise_variance=0.04, floor=1e-4).step()  # one step: m̂ = g, v̂ = g²
    expected = -p.grad / torch.sqrt(torch.clamp(p.grad ** 2 - 0.04, min=1e-4))
    assert torch.allclose(p.detach(), expected)


def test_runtime_hands_dp_adam_bc_the_noise_variance_opacus_adds(tiny_classifier, monkeypatch):
    seen = []

    class Recording(DpAdamBC):
        def __init__(self, params, **kwargs):
            seen.append(kwargs["noise_variance"])
            super().__init__(params, **kwargs)

    monkeypatch.setattr("privfed.client.runtime.DpAdamBC", Recording)
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.5",
                          "privacy.max_grad_norm=0.5", "training.optimizer=adam_bc", "training.local_steps=1")
    fed = build_federation(cfg)
    client = fed.clients[0]
    fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, [])
    from privfed.privacy.dpsgd import expected_batch_size

    assert seen == [pytest.approx((1.5 * 0.5 / expected_batch_size(client.num_examples, 16)) ** 2)]


# ---------------------------------------------------------------- a whole tuned, seeded sweep


def test_tuned_seeded_sweep_selects_on_validation_and_reports_intervals(tmp_path):
    base = make_config(TINY_CLASSIFIER, *FAST, "data.max_examples=200")
    result = privfed.sweep(base, [8, math.inf], tmp_path, tune=["privacy.max_grad_norm=0.5,1", "training.lr=0.05"],
                           seeds=2, fixed_split=True, progress=False)
    assert len(result.runs) == 2 * 2 + 2  # ε = 8: 2 trials; ∞: the clipping axis drops out, 1 trial
    for p in result.points:
        scored = [t for t in result.trials if t.target_epsilon == p.target_epsilon]
        best = max(scored, key=lambda t: (t.point.validation.mean, -scored.index(t)))
        assert [t.trial for t in scored if t.chosen] == [best.trial] == [p.trial]
        assert p.quality.n == 2 and {r["config"]["seed"] for r in p.runs} == {1, 2}
        assert len({json.dumps(r["partition"]) for r in p.runs}) == 1  # --fixed-split: one split for both seeds
        assert all(r["final"].get("val_accuracy") is not None for r in p.runs)
    assert result.nonprivate.trial.keys() == {"training.lr"}
    table = (tmp_path / "table.md").read_text()
    assert "Tuned at every ε (∞ included)" in table and "not privacy-accounted" in table and " ± " in table
    assert (tmp_path / "tuning.md").read_text().count("| yes |") == 2
    assert len((tmp_path / "seeds.csv").read_text().splitlines()) == 1 + 2 * 2
    again = load_sweep(tmp_path)
    assert [p.trial for p in again.points] == [p.trial for p in result.points]
    assert again.points[0].quality == result.points[0].quality
    fig = privfed.plots.plot_privacy_utility([result])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("no DP, tuned" in t for t in labels)
    assert len(fig.axes[0].containers) == 1  # the private series with its error bars
    bytes_fig = privfed.plots.plot_quality_vs_bytes([result])
    assert len(bytes_fig.axes[0].containers) == 2
    eps_fig = privfed.plots.plot_client_epsilons(result.points[0].runs[0])
    assert len(eps_fig.axes[0].lines) == len(result.points[0].runs[0]["partition"]) + 1  # clients + target


def test_untuned_runs_say_so_and_summarize_groups_seeds(tiny_classifier):
    runs = [_fake_run(8.0, 0.9, 0), _fake_run(8.0, 0.8, 1), _fake_run(math.inf, 0.85, 0)]
    for r in runs:
        r["config"]["name"] = r["config"]["name"].rsplit("-s", 1)[0] + f"-s{r['config']['seed']}"
        r["initial"] = {"eval_accuracy": 0.2}
    summary = summarize(runs)
    assert [p.quality.n for p in summary.points] == [2, 1] and summary.label == "x"
    assert "not tuned" in summary.tuning_text()
    fig = privfed.plots.plot_privacy_utility([summary])
    assert any("same hyper-parameters, not tuned" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    with pytest.raises(ValueError, match="at least one sweep"):
        privfed.plots.plot_privacy_utility([])


def test_sweep_plans_are_validated_up_front(tiny_classifier):
    base = tiny_classifier(*FAST)
    specs = plan_runs(base, SweepPlan((1.0, 8.0, math.inf), (parse_tune("training.lr=0.01,0.02"),), seeds=3))
    assert len(specs) == 3 * 2 * 3
    assert {s.config.data.validation_fraction for s in specs} == {0.1}
    assert {s.config.seed for s in specs} == {1, 2, 3} and {s.config.data.split_seed for s in specs} == {-1}
    untuned = plan_runs(base, SweepPlan((8.0,)))
    assert [s.config.name for s in untuned] == ["tiny-bert-eps8"] and untuned[0].config.data.validation_fraction == 0


def test_every_study_of_make_tables_is_a_valid_plan(monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "make_tables.py"
    spec = importlib.util.spec_from_file_location("make_tables", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_tables", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    for name, series in module.STUDIES.items():
        for s in series:
            for base, plan in s.plans():
                assert plan_runs(base, plan), (name, s.label)  # every config and trial validates


def test_gap_plot_draws_a_line_per_epsilon():
    def sweep_at(quality: float) -> Sweep:
        points = (Point(8.0, {}, (_fake_run(8.0, quality, 0), _fake_run(8.0, quality + 0.01, 1))),
                  Point(math.inf, {}, (_fake_run(math.inf, 0.95, 0),)))
        return Sweep("x", SweepPlan((8.0, math.inf), seeds=2), points)

    fig = privfed.plots.plot_quality_against_setting([(1, sweep_at(0.9)), (10, sweep_at(0.7))], xlabel="clients")
    assert len(fig.axes[0].containers) == 2  # ε = 8 and no DP, each with error bars
    assert list(fig.axes[0].containers[0].lines[0].get_ydata()) == pytest.approx([0.905, 0.705])
