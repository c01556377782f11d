"""Per-client held-out evaluation (natural partitions) and every plot, from real (tiny) runs."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

import privfed
from privfed.engines.inprocess import run
from privfed.evaluation import evaluate
from privfed.federation.setup import build_federation


@pytest.fixture(scope="module")
def causal_runs(tmp_path_factory):
    from conftest import TINY_CAUSAL, make_config

    out = tmp_path_factory.mktemp("runs")
    return [run(make_config(TINY_CAUSAL, "training.rounds=1", f"name=tiny-{lr}", f"training.lr={lr}"), out / str(lr),
                progress=False) for lr in (0.01, 0.003)]


def test_per_client_metrics_equal_an_evaluation_on_that_clients_own_groups(tiny_causal):
    fed = build_federation(tiny_causal())
    result = evaluate(fed.runtime.model, fed.test_data, fed.task, owners=fed.test_owners)
    owners = fed.test_owners
    assert owners is not None and len(owners) == len(fed.test_data)
    groups_of = {p["client"]: set(p["groups"]) for p in fed.partition_summary}
    assert set(result["per_client"]) == {str(c) for c in set(owners.tolist()) - {-1}}
    for cid, metrics in result["per_client"].items():
        mine = np.flatnonzero(owners == int(cid))
        assert metrics["examples"] == len(mine) > 0
        alone = evaluate(fed.runtime.model, TensorDataset(*(t[mine] for t in fed.test_data.tensors)), fed.task)
        assert metrics["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-9)
        assert metrics["eval_perplexity"] == pytest.approx(alone["eval_perplexity"], rel=1e-9)
        assert groups_of[int(cid)]  # the client owns natural groups, and its examples come from them
    unowned = np.count_nonzero(owners == -1)
    assert sum(m["examples"] for m in result["per_client"].values()) + unowned == len(fed.test_data)


def test_per_client_evaluation_is_recorded_before_training_and_after_each_round(causal_runs):
    res = causal_runs[0]
    assert res["initial"]["per_client"] and all(r["per_client"] for r in res["rounds"])
    before, after = res["initial"]["per_client"], res["rounds"][-1]["per_client"]
    assert before.keys() == after.keys()
    assert any(after[c]["eval_loss"] < before[c]["eval_loss"] for c in before)  # training helped someone


def test_no_per_client_evaluation_without_natural_groups(tiny_classifier):
    assert build_federation(tiny_classifier()).test_owners is None


def test_every_plot_draws_and_saves(causal_runs, tmp_path):
    res = causal_runs[0]
    figures = {
        "rounds": privfed.plots.plot_rounds(res, path=tmp_path / "rounds.png"),
        "utility": privfed.plots.plot_privacy_utility([privfed.summarize(causal_runs)], path=tmp_path / "utility.png"),
        "clients": privfed.plots.plot_client_quality(causal_runs, labels=["a", "b"], path=tmp_path / "clients.png"),
    }
    inputs = {c: np.full(300, 0.1 * c) for c in range(3)}
    views = {}
    for method in privfed.Aggregation:
        views[method.value] = privfed.ServerView()
        cfg = privfed.AggregationConfig(method=method, key_bits=2048, workers=1)
        with privfed.make_aggregator(cfg, num_clients=3, vector_length=300) as agg:
            agg.aggregate(1, inputs, view=views[method.value])
    figures["view"] = privfed.plots.plot_server_view(inputs, views, client=1, path=tmp_path / "view.png")
    figures["messages"] = privfed.plots.plot_messages(views["secagg"], path=tmp_path / "messages.png")
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000, name
    # what was drawn, not only that a file exists
    clients_axes = figures["clients"].axes
    assert len(clients_axes) == 2 and all(len(ax.patches) == 2 * len(res["partition"]) for ax in clients_axes)
    assert len(figures["rounds"].axes[0].lines[0].get_xdata()) == 1 + len(res["rounds"])  # round 0 = before
    assert len(figures["utility"].axes[0].lines) >= 2  # the no-DP line(s) and the before-training line
    view_axes = figures["view"].axes
    assert len(view_axes) == 4 and all(sum(p.get_height() for p in ax.patches) > 0 for ax in view_axes)
    secagg_heights = np.array([p.get_height() for p in view_axes[2].patches])  # density of masked words
    assert secagg_heights.max() < 3  # spread over the word range; an unmasked constant input would be one spike
    kinds = {m.kind for m in views["secagg"].messages}
    assert len(figures["messages"].axes[0].patches) == len(kinds) * 3


def test_plot_errors_say_what_is_missing(causal_runs, tiny_classifier, tmp_path):
    with pytest.raises(ValueError, match="at least one sweep"):
        privfed.plots.plot_privacy_utility([])
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        privfed.plots.plot_client_quality(causal_runs[:1], labels=["a", "b"])
    classifier = run(tiny_classifier("training.rounds=1"), tmp_path / "cls", progress=False)
    with pytest.raises(ValueError, match="partition.scheme=natural"):
        privfed.plots.plot_client_quality([classifier])
    assert math.isfinite(classifier["final"]["eval_accuracy"])


def test_the_library_leaves_the_matplotlib_backend_to_its_caller():
    import importlib

    from privfed.report import plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for Jupyter's inline backend: importing the plots must not replace it
    try:
        importlib.reload(plots)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
