"""The client runtime: one model for every client, plain-data clients, empty and tiny Poisson batches, virtual
batches with the same privacy, and tensors that follow the model's device."""
import ast
import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from transformers import LlamaForCausalLM

import privfed
from privfed.client.device import resolve_device
from privfed.client.recorded import train_recorded
from privfed.client.runtime import ClientRuntime, TrainedRound
from privfed.client.state import ClientState
from privfed.config import Accountant, Clipping
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.federation.setup import build_federation
from privfed.privacy.dpsgd import DpSettings, DpSgdRound, expected_batch_size, wrap_for_dp
from privfed.privacy.ledger import Ledger

MANY = ("partition.scheme=iid", "partition.num_clients=60", "data.max_examples=300", "model.regime=lora",
        "privacy.mode=fixed_noise", "training.rounds=1")


def test_one_model_whatever_the_number_of_clients(tiny_causal):
    fed = build_federation(tiny_causal(*MANY))
    ledger = Ledger()
    for client in fed.clients[:5]:
        train_recorded(fed.runtime, client, fed.shard(client), 1, fed.initial_vector, ledger)
    gc.collect()
    assert sum(type(o) is LlamaForCausalLM for o in gc.get_objects()) == 1
    for client in fed.clients:  # a client is plain data: nothing of torch survives between its rounds
        for f in dataclasses.fields(ClientState):
            assert not isinstance(getattr(client, f.name), (torch.Tensor, nn.Module, torch.optim.Optimizer))


@pytest.mark.parametrize("batch_size", [2, 16])
def test_empty_and_undersized_poisson_batches_train(tiny_causal, tmp_path, batch_size):
    """~4 examples a client: batch 2 draws empty Poisson batches (the 0-row LLaMA forward crashed before);
    batch 16 is larger than every client."""
    res = privfed.run(tiny_causal(*MANY, f"training.batch_size={batch_size}", "training.local_steps=3"),
                      tmp_path, progress=False)
    assert res["rounds"][0]["clients_trained"] == 60
    assert all(c["steps"] == 3 for c in res["privacy"]["clients"])


def _toy_round(seed: int, sigma: float, clipping: Clipping, physical: int) -> tuple[DpSgdRound, nn.Linear]:
    torch.manual_seed(seed)
    model = nn.Linear(200, 10)
    params = list(model.parameters())
    dp = DpSettings(1.0, Accountant.RDP, clipping)
    data = TensorDataset(torch.randn(20, 200))
    return DpSgdRound(wrap_for_dp(model, params, dp), params, torch.optim.SGD(params, lr=1.0), data, 1, physical,
                      sigma, dp, []), model


@pytest.mark.parametrize("physical", [0, 2])
@pytest.mark.parametrize("clipping", list(Clipping))
def test_an_empty_batch_is_a_noisy_step_of_zero_gradient(clipping, physical):
    """q = 1/20 over 20 examples: some seed draws nobody. That step must still be taken, accounted, and be pure
    noise: delta = -lr * N(0, (sigma C)^2) / expected batch (1 here), whichever clipping and chunking."""
    for seed in range(100):
        training, model = _toy_round(seed, 2.0, clipping, physical)
        seen: list[int] = []

        def loss_of(tensors, training=training, seen=seen):
            seen.append(tensors[0].shape[0])
            return training.module(tensors[0]).pow(2).sum(dim=1)

        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        losses = training.step(loss_of)
        if seen:
            continue  # this seed drew a non-empty batch
        delta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before
        assert losses == []
        assert training.accountant_history == [(2.0, 0.05, 1)]
        assert float(delta.std()) == pytest.approx(2.0, rel=0.1)
        assert abs(float(delta.mean())) < 0.2
        return
    pytest.fail("no seed in 100 drew an empty Poisson batch at q = 1/20 over 20 examples")


def test_expected_batch_size_is_exact():
    """n * q in integers: floating point gives 49 * (1/49) = 0.999... -> 0, a division by zero in Opacus."""
    assert [expected_batch_size(n, b) for n, b in [(49, 1), (98, 2), (345, 64), (3, 16), (64, 64)]] == [1, 2, 57, 3, 64]


@pytest.mark.parametrize("clipping", list(Clipping))
def test_physical_batches_give_the_same_private_step(tiny_classifier, clipping):
    """A logical Poisson batch cut into chunks of 5 (Opacus' batch memory manager) is the same step: same
    sampling, same clipped sum, same noise."""
    deltas, rows = {}, {}
    for physical in (0, 5):
        cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0",
                              "training.batch_size=32", "training.local_steps=2", "training.optimizer=sgd",
                              f"privacy.clipping={clipping.value}", f"training.physical_batch_size={physical}")
        fed = build_federation(cfg)
        client = fed.clients[0]
        rows[physical] = []
        fed.runtime.model.register_forward_pre_hook(
            lambda _, args, kwargs, seen=rows[physical]: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        deltas[physical] = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, []).update.delta
    assert len(rows[0]) == 2 and max(rows[0]) > 5  # two logical batches, each in one pass
    assert max(rows[5]) <= 5 and sum(rows[5]) == sum(rows[0]) and len(rows[5]) > 2  # the same rows, in chunks
    assert np.linalg.norm(deltas[0]) > 0
    np.testing.assert_allclose(deltas[5], deltas[0], atol=1e-6)


def test_bytes_count_every_participant_when_some_drop_before_uploading(tiny_classifier, tmp_path):
    """1 of 3 drops before its input: it never trains, sends nothing, and the bytes are the two uploads."""
    res = privfed.run(tiny_classifier("training.rounds=1", "aggregation.dropout_fraction=0.34",
                                      "aggregation.dropout_stage=masked_input"), tmp_path, progress=False)
    row, values = res["rounds"][0], res["model"]["trainable_parameters"] + 1
    assert row["dropouts"] == 1 and row["clients_trained"] == row["clients_aggregated"] == 2
    assert row["bytes_up"] == 2 * 4 * values


def test_accountant_and_ledger_must_agree(tiny_classifier):
    fed = build_federation(tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise"))

    class MiscountingRuntime(ClientRuntime):
        def train(self, *args, **kwargs) -> TrainedRound:
            result = super().train(*args, **kwargs)
            return dataclasses.replace(result, event=dataclasses.replace(result.event, steps=result.event.steps + 1))

    fed.runtime.__class__ = MiscountingRuntime
    with pytest.raises(PrivacyViolationError, match="accountant and the ledger disagree"):
        train_recorded(fed.runtime, fed.clients[0], fed.shard(fed.clients[0]), 1, fed.initial_vector, Ledger())


def test_device_setting():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="training.device"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="training.device"):
        privfed.load_config(overrides=["training.device=gpu"])


TRAINING_PATH = ["privfed/client", "privfed/privacy/dpsgd.py", "privfed/data/tokenize.py", "privfed/models/losses.py",
                 "privfed/models/regimes.py", "privfed/models/pooling.py", "privfed/evaluation.py",
                 "privfed/observe/evaluation.py", "privfed/federation/vectors.py"]
CONSTRUCTORS = {"zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "tensor", "eye", "linspace"}


def test_training_path_creates_no_cpu_only_tensors():
    """Every tensor privfed makes on the training path says where it lives (device=...) or is moved (.to(...)),
    so the runtime works unchanged on a GPU."""
    root = Path(privfed.__file__).parent.parent
    files = [p for entry in TRAINING_PATH for p in sorted((root / entry).glob("*.py")) or [root / entry]]
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text())
        moved = {id(node.func.value) for node in ast.walk(tree)  # x.to(<something naming a device>)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to"
                 and any("device" in ast.unparse(arg) for arg in node.args)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                continue
            name = node.func.attr
            if name in CONSTRUCTORS and not any(k.arg == "device" for k in node.keywords):
                offenders.append(f"{path.name}:{node.lineno} torch.{name} without device=")
            if name == "from_numpy" and id(node) not in moved:
                offenders.append(f"{path.name}:{node.lineno} torch.from_numpy without .to(device)")
    assert len(files) >= 10
    assert not offenders, offenders


def test_callbacks_see_every_event_and_an_opt_in_server_view(tiny_classifier, tmp_path):
    """A callback that asks for the server's view of a round gets it (masked words under secagg); the others
    cost nothing. Every sampled client is reported once, as trained or skipped."""

    class Watcher(privfed.Callback):
        needs_server_view = True

        def __init__(self):
            self.trained, self.views, self.records = [], [], []

        def on_client_trained(self, event):
            self.trained.append((event.round, event.update.client, event.event is not None))

        def on_aggregated(self, event):
            self.views.append(event.view)

        def on_round_committed(self, record, state):
            self.records.append((record.round, state.completed_rounds, record.evaluation["eval_accuracy"]))

    watcher = Watcher()
    res = privfed.run(tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "training.rounds=2",
                                      "aggregation=secagg"), tmp_path, progress=False, callbacks=[watcher])
    assert watcher.trained == [(r, c, True) for r in (1, 2) for c in range(3)]
    assert [v.kinds()["MASKED_INPUT"] for v in watcher.views] == [3, 3]
    assert all(len(v.uploads) == 3 for v in watcher.views)
    assert watcher.records == [(r, r, res["rounds"][r - 1]["eval_accuracy"]) for r in (1, 2)]
