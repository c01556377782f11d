"""benchmarks/scale.py: its bare baseline trains on exactly privfed's batches, and its last line is JSON."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privfed.data.tokenize import as_batch
from privfed.federation.setup import build_federation
from privfed.models.losses import per_example_loss

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bare_loop_draws_the_same_shards_and_poisson_batches_as_privfed():
    scale = load_scale()
    cfg = scale.scale_config(12, ("english",))
    fed = build_federation(cfg)
    _, shards = scale.bare_data(cfg)
    for client in fed.clients:
        assert (shards[client.id] == client.shard).all()
        trained = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, [])
        rows = torch.from_numpy(scale.poisson_rows(cfg.seed, 1, client.id, shards[client.id], scale.BATCH))
        if len(rows) == 0:
            assert math.isnan(trained.update.train_loss)
            continue
        fed.runtime.load(fed.initial_vector)  # the loss privfed reports is the global model's, before its step
        with torch.no_grad():
            loss = per_example_loss(fed.runtime.module, as_batch(tuple(t[rows] for t in fed.pool.tensors)), fed.task)
        assert float(loss.mean()) == pytest.approx(trained.update.train_loss, rel=1e-5)


@pytest.mark.slow
def test_tiny_invocation_ends_with_json():
    out = subprocess.run([sys.executable, str(SCRIPT), "--clients", "2,4", "--languages", "english"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert [r["n"] for r in result["results"]] == [2, 4]
    assert all(r["same_first_batch"] for r in result["results"])
    assert {a["result"] for a in result["aims"].values()} <= {"PASS", "FAIL"}
