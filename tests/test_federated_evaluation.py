"""Federated evaluation (evaluation.where clients | both): each client scores the new global model on its own
held-out records, and only what the aggregation method shows reaches the server."""
from __future__ import annotations

import numpy as np
import pytest
from flower_helpers import LocalLink

from privfed import rounds_table, summary_table
from privfed.config import Task
from privfed.engines.flower.clients import run_over_link
from privfed.engines.inprocess import run
from privfed.errors import ConfigError
from privfed.evaluation import EvaluationSums
from privfed.federation.held_out import LOSS_CAP, evaluation_contribution, federation_metrics

FEDERATED = ("data.validation_fraction=0.2", "training.rounds=2", "model.regime=lora")


def test_the_sum_of_contributions_gives_the_pooled_metrics():
    clients = [EvaluationSums(12.0, 10.0, 7.0, 10.0), EvaluationSums(3.0, 4.0, 1.0, 4.0),
               EvaluationSums(900.0, 30.0, 0.0, 30.0)]  # the last: mean loss 30 > LOSS_CAP, sent as LOSS_CAP
    total = sum(evaluation_contribution(s, scale=40.0) for s in clients)
    got = federation_metrics(total, Task.CLASSIFICATION, 3)
    assert got["fed_accuracy"] == pytest.approx(8 / 44)
    assert got["fed_loss"] == pytest.approx((12 + 3 + LOSS_CAP * 30) / 44)
    assert all(0 <= v <= 1 for s in clients for v in evaluation_contribution(s, 40.0))


def test_plain_federated_evaluation_equals_the_pooled_held_out_records_and_shows_each_client(tiny_classifier,
                                                                                               tmp_path):
    both = run(tiny_classifier("evaluation.where=both", *FEDERATED), tmp_path / "both", progress=False)
    server = run(tiny_classifier(*FEDERATED), tmp_path / "server", progress=False)
    for row, plain in zip(both["rounds"], server["rounds"], strict=True):
        # the clients' evaluation changes nothing the server computes
        assert {k: row[k] for k in ("train_loss", "eval_loss", "eval_accuracy")} == \
            {k: plain[k] for k in ("train_loss", "eval_loss", "eval_accuracy")}
        # their held-out records pooled are the tuner's validation split: the same metrics
        assert row["fed_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-12)
        assert row["fed_loss"] == pytest.approx(row["val_loss"], rel=1e-6)  # batched differently: float rounding
        assert row["fed_clients"] == 3 and set(row["fed_per_client"]) == {"0", "1", "2"}
    assert both["final"]["fed_accuracy"] == both["rounds"][-1]["fed_accuracy"]
    assert "clients' accuracy" in rounds_table(both)


def test_under_secagg_the_server_learns_the_totals_only_here_and_over_flower(tiny_classifier, tmp_path):
    plain = run(tiny_classifier("evaluation.where=both", *FEDERATED), tmp_path / "plain", progress=False)
    cfg = tiny_classifier("aggregation=secagg", "evaluation.where=both", *FEDERATED)
    local = run(cfg, tmp_path / "secagg", progress=False)
    flower = run_over_link(cfg, tmp_path / "flower", LocalLink(cfg, [{"partition-id": i} for i in range(3)]))
    for result in (local, flower):
        for row, reference in zip(result["rounds"], plain["rounds"], strict=True):
            assert "fed_per_client" not in row  # the sum, never a client's share
            assert row["fed_accuracy"] == pytest.approx(reference["fed_accuracy"], abs=1e-4)
            assert row["fed_loss"] == pytest.approx(reference["fed_loss"], abs=1e-3)
    assert "val_accuracy" not in flower["rounds"][0]  # over Flower the server never pools the clients' records


def test_clients_only_evaluation_reports_the_federation_everywhere(tiny_classifier, tmp_path, capsys):
    result = run(tiny_classifier("evaluation.where=clients", *FEDERATED), tmp_path / "clients", progress=True)
    assert result["initial"] == {} and not any("eval_accuracy" in row for row in result["rounds"])
    assert np.isfinite(result["final"]["fed_accuracy"]) and "perplexity_over" not in result["final"]
    assert "round 2: fed_accuracy=" in capsys.readouterr().out
    assert "clients' accuracy" in rounds_table(result) and "accuracy" in summary_table([result])


def test_federated_evaluation_needs_held_out_records(tiny_classifier):
    with pytest.raises(ConfigError, match="set data.validation_fraction in") as err:
        tiny_classifier("evaluation.where=clients")
    assert err.value.key == "evaluation.where"
