"""Real-model runs (minutes on 2 cores): ``python3 -m pytest -m slow``. The plain demo's quality is checked where
the quickstart notebook, as written, runs it (tests/test_notebooks.py)."""
import json
import math
import subprocess
import sys

import pytest

import privfed

pytestmark = pytest.mark.slow


def test_smollm2_converts_once_and_lora_lowers_perplexity(tmp_path):
    cfg = privfed.load_config("experiments/chatterbot_smollm2_lora.yaml",
                              ["training.rounds=1", "privacy.mode=off", "data.eval_examples=40"])
    res = privfed.run(cfg, tmp_path, progress=False)
    assert math.isfinite(res["final"]["eval_perplexity"])
    assert res["final"]["eval_perplexity"] < res["initial"]["eval_perplexity"]


def test_demo_under_secagg_with_30_percent_dropping_after_masking(tmp_path):
    cfg = privfed.load_config(overrides=["aggregation=secagg", "aggregation.dropout_fraction=0.3"])
    res = privfed.run(cfg, tmp_path, progress=False)
    assert not res["notes"]  # no round aborted
    for row in res["rounds"]:
        assert row["dropouts"] == 2 and row["clients_aggregated"] == 5  # their inputs still count
        assert row["aggregation"]["abort_reason"] is None
    assert res["final"]["eval_accuracy"] >= 0.85


def test_demo_under_paillier_with_its_3072_bit_default_key(tmp_path):
    res = privfed.run(privfed.load_config(overrides=["aggregation=paillier"]), tmp_path, progress=False)
    for row in res["rounds"]:
        details = row["aggregation"]
        assert details["key_bits"] == 3072 and details["slots_per_ciphertext"] == 3071 // 24
        assert row["clients_aggregated"] == 5 and details["abort_reason"] is None
        assert row["bytes_up_per_client"] < 2 * 4 * res["model"]["trainable_parameters"]
    assert res["final"]["eval_accuracy"] >= 0.85 and res["final"]["epsilon"] <= 8.0


def test_instruction_tuning_example_scores_assistant_tokens_and_writes_answers(tmp_path):
    cfg = privfed.load_config("experiments/chatterbot_smollm2_instruct.yaml",
                              ["training.rounds=1", "training.local_steps=2", "data.eval_examples=16",
                               "evaluation.generations=2", "evaluation.max_new_tokens=16"])
    res = privfed.run(cfg, tmp_path, progress=False)
    assert res["final"]["perplexity_over"] == "assistant tokens" and math.isfinite(res["final"]["eval_perplexity"])
    assert res["final"]["epsilon"] <= 8.0
    lines = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 1] and all(line["generated"] for line in lines)


def test_own_model_folders_and_data_files_from_the_walkthrough(tmp_path):
    """The walkthrough of docs/how-to/own-model-and-data.md: the built-in data written as an organisation's files,
    trained from local model folders given by path (MiniLM's package folder as a classifier, SmolLM2's conversion
    as a chat model)."""
    from privfed import assets
    from privfed.models.sources import smollm2_dir

    files = tmp_path / "byo"
    subprocess.run([sys.executable, "experiments/write_example_files.py", str(files)], check=True, timeout=300)
    small = ["training.rounds=1", "partition.scheme=natural", "data.eval_examples=40", "privacy.mode=off"]
    news = privfed.run(privfed.load_config(overrides=[
        *small, f"model.source={assets.minilm_dir()}", f"data.source={files / 'news.csv'}", "data.max_examples=600",
        "data.label_column=topic", "data.client_column=organisation", "partition.num_clients=0",
        "training.local_steps=4", "training.lr=0.005"]), tmp_path / "news", progress=False)
    assert sorted(tuple(c["groups"]) for c in news["partition"]) == [("hospital_a",), ("hospital_b",), ("hospital_c",)]
    assert news["final"]["eval_loss"] < news["initial"]["eval_loss"]  # the fresh head learns (0.775 at ε = 8)
    chat = privfed.run(privfed.load_config(overrides=[
        *small, f"model.source={smollm2_dir()}", f"data.source={files / 'dialogues'}", "data.records=chat",
        "data.max_examples=200", "partition.num_clients=3", "evaluation.generations=1", "training.local_steps=2",
        "evaluation.max_new_tokens=8", "training.lr=0.003"]), tmp_path / "chat", progress=False)
    assert chat["final"]["perplexity_over"] == "assistant tokens" and len(chat["partition"]) == 3
    assert chat["final"]["eval_perplexity"] < chat["initial"]["eval_perplexity"]
