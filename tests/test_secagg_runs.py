"""SecAgg inside real (tiny) experiments: every regime, the same accuracy as plain, dropouts, aborts, DDP."""
from __future__ import annotations

import json

import numpy as np
import pytest

from privfed.engines.inprocess import run
from privfed.errors import ConfigError
from privfed.results import RunDirectory


@pytest.mark.parametrize("regime", ["full", "lora", "prompt"])
def test_secagg_matches_plain_on_classifier_regimes(tiny_classifier, tmp_path, regime):
    plain = run(tiny_classifier(f"model.regime={regime}"), tmp_path / "plain", progress=False)
    secure = run(tiny_classifier(f"model.regime={regime}", "aggregation=secagg"), tmp_path / "secagg",
                 progress=False)
    assert abs(plain["final"]["eval_accuracy"] - secure["final"]["eval_accuracy"]) <= 0.01
    assert abs(plain["final"]["eval_loss"] - secure["final"]["eval_loss"]) < 1e-3
    details = secure["rounds"][-1]["aggregation"]
    assert details["protocol"] == "secagg" and details["word_bits"] == 32 and details["abort_reason"] is None
    assert details["quantisation_rms"] > 0 and details["server_crypto_seconds"] > 0
    assert secure["rounds"][-1]["bytes_up_per_client"] > plain["model"]["bytes_per_transfer"]


def test_secagg_pretrain_with_dropouts_after_masking_completes_every_round(tiny_causal, tmp_path):
    cfg = tiny_causal("aggregation=secagg", "partition.num_clients=4", "aggregation.dropout_fraction=0.3",
                      "training.rounds=3")
    res = run(cfg, tmp_path / "r", progress=False)
    for row in res["rounds"]:
        assert row["dropouts"] == 1 and row["clients_aggregated"] == 4  # the dropped client's input still counts
        assert row["aggregation"]["abort_reason"] is None
    assert res["final"]["eval_perplexity"] < res["initial"]["eval_perplexity"]
    assert not res["notes"]


def test_dropouts_before_masking_are_recovered_on_a_sparse_graph(tiny_classifier, tmp_path):
    cfg = tiny_classifier("aggregation=secagg", "partition.num_clients=8", "data.max_examples=400",
                          "aggregation.neighbours=4", "aggregation.dropout_fraction=0.25",
                          "aggregation.dropout_stage=masked_input", "training.rounds=1",
                          "federation.strategy=fedyogi")
    res = run(cfg, tmp_path / "r", progress=False)
    row = res["rounds"][0]
    assert row["aggregation"]["protocol"] == "secagg+" and row["aggregation"]["neighbours"] == 4
    assert row["aggregation"]["dropouts_recovered"] == 2 and row["clients_aggregated"] == 6


def test_below_threshold_round_aborts_and_leaves_the_model_untouched(tiny_classifier, tmp_path):
    cfg = tiny_classifier("aggregation=secagg", "aggregation.dropout_fraction=0.67",
                          "aggregation.dropout_stage=share_keys")
    res = run(cfg, tmp_path / "r", progress=False)
    assert len(res["notes"]) == 2 and all("aggregation aborted" in n for n in res["notes"])
    assert res["final"]["eval_loss"] == res["initial"]["eval_loss"]
    state = RunDirectory(tmp_path / "r").load_checkpoint()
    from privfed.federation.setup import build_federation
    np.testing.assert_array_equal(state.global_vector, build_federation(cfg).initial_vector)


def test_distributed_dp_reports_user_epsilon_beside_record_epsilon(tiny_classifier, tmp_path):
    cfg = tiny_classifier("aggregation=secagg", "privacy.distributed_noise=1.0", "privacy.update_clip=0.5",
                          "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0")
    res = run(cfg, tmp_path / "r", progress=False)
    assert 0 < res["final"]["user_epsilon"] < float("inf")
    assert 0 < res["final"]["epsilon"] < float("inf")
    events = [json.loads(line) for line in (tmp_path / "r" / "ledger.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "distributed_dp" for e in events) == 3 * 2  # 3 clients x 2 rounds
    from privfed.report.tables import markdown_table, summary_rows
    assert "user ε" in markdown_table(summary_rows([res]))


def test_configuration_errors_come_before_training(tiny_classifier, tmp_path):
    with pytest.raises(ConfigError, match="aggregation.method=secagg"):
        tiny_classifier("privacy.distributed_noise=1.0")
    with pytest.raises(ConfigError, match="even"):
        tiny_classifier("aggregation=secagg", "aggregation.neighbours=3")
    with pytest.raises(ConfigError, match="majority"):
        tiny_classifier("aggregation=secagg", "aggregation.threshold=0.4")
    with pytest.raises(ConfigError, match=r"\[2, 53\]"):
        tiny_classifier("aggregation=secagg", "aggregation.value_bits=62")
    with pytest.raises(ConfigError, match="lower value_bits"):  # noise too fine-grained to sample: before training
        run(tiny_classifier("aggregation=secagg", "aggregation.value_bits=40", "privacy.distributed_noise=1.0",
                            "privacy.update_clip=1.0"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_a_lone_contributor_is_never_revealed():
    from privfed.aggregation.secagg import SecAggBackend
    from privfed.config import Aggregation, AggregationConfig

    agg = SecAggBackend(AggregationConfig(method=Aggregation.SECAGG), max_clients=3, vector_length=4)
    outcome = agg.aggregate(1, {0: np.ones(4)})
    assert outcome.total is None and "needs 2" in outcome.details["abort_reason"]
