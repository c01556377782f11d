"""DP-SGD really clips and adds noise, fails loudly when it cannot, and respects every client's budget."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import privfed
from privfed.client.runtime import build_optimizer
from privfed.config import Accountant, ClientOptimizer, Clipping, TrainingConfig
from privfed.errors import ConfigError, PrivacyViolationError
from privfed.federation.setup import build_federation
from privfed.privacy.accounting import epsilon_of_history
from privfed.privacy.dp_adam import DpAdamBC
from privfed.privacy.dpsgd import DpSettings, DpSgdRound, expected_batch_size, wrap_for_dp


def _one_step_update(cfg, sigma):
    """Update of client 0 after its first round from the initial global state, with noise multiplier sigma."""
    fed = build_federation(cfg)
    client = dataclasses.replace(fed.clients[0], noise_multiplier=sigma)
    trained = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, [])
    expected_batch = expected_batch_size(client.num_examples, cfg.training.batch_size)
    return trained.update.delta, expected_batch


def test_noise_std_matches_sigma_c_over_b(tiny_classifier):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0",
                          "privacy.max_grad_norm=0.5", "training.local_steps=1", "training.optimizer=sgd",
                          "training.lr=1.0", "data.max_examples=0")
    clean, batch = _one_step_update(cfg, 0.0)
    noisy, _ = _one_step_update(cfg, 3.0)
    noise = noisy - clean  # same seed: same Poisson batch, same clipped gradient; only the noise differs
    expected = 3.0 * 0.5 / batch
    assert noise.size > 2000
    assert np.std(noise) == pytest.approx(expected, rel=0.05)
    assert abs(np.mean(noise)) < 4 * expected / math.sqrt(noise.size)


def test_clipping_bounds_the_clean_update(tiny_classifier):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "privacy.max_grad_norm=0.01",
                          "training.local_steps=1", "training.optimizer=sgd", "training.lr=1.0")
    clean, batch = _one_step_update(cfg, 0.0)
    fed = build_federation(cfg)
    actual_batch_bound = 0.01 * fed.clients[0].num_examples / batch  # every sampled example adds at most C
    assert 0 < np.linalg.norm(clean) <= actual_batch_bound


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


def _toy_training(model, sigma, clipping=Clipping.PER_SAMPLE):
    data = TensorDataset(torch.randn(32, 4), torch.zeros(32, dtype=torch.long))
    params = [p for p in model.parameters() if p.requires_grad]
    dp = DpSettings(1.0, Accountant.RDP, clipping)
    module = wrap_for_dp(model, params, dp)
    return DpSgdRound(module, params, torch.optim.SGD(params, lr=0.1), data, 8, 0, sigma, dp, [])


def _toy_loss(training):
    return lambda tensors: training.module(tensors[0]).sum(dim=1)


@pytest.mark.parametrize("clipping", list(Clipping))
def test_tensor_without_per_sample_gradient_raises(clipping):
    training = _toy_training(_TwoHeads(), 1.0, clipping)
    with pytest.raises(PrivacyViolationError, match="no per-sample gradient"):
        training.step(_toy_loss(training))


@pytest.mark.parametrize("regime", ["full", "lora", "prompt"])
def test_ghost_clipping_gives_the_per_sample_update(tiny_classifier, tiny_causal, regime):
    """Same seed, same batch, same noise: ghost clipping (norms without per-sample gradients) and materialised
    per-sample clipping must produce the same private update, in every regime and for both model families."""
    for make, regime_name in ((tiny_classifier, regime), (tiny_causal, "pretrain" if regime == "full" else regime)):
        common = (f"model.regime={regime_name}", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0",
                  "privacy.max_grad_norm=0.05", "training.local_steps=2", "training.optimizer=sgd",
                  "training.lr=1.0")
        per_sample, _ = _one_step_update(make(*common, "privacy.clipping=per_sample"), 1.0)
        ghost, _ = _one_step_update(make(*common, "privacy.clipping=ghost"), 1.0)
        clean, _ = _one_step_update(make(*common, "privacy.clipping=ghost"), 0.0)
        assert np.linalg.norm(ghost - clean) > 10 * np.abs(ghost - per_sample).max()  # the noise is really there
        np.testing.assert_allclose(ghost, per_sample, atol=1e-6)


def test_ghost_clipping_refuses_tied_weights_before_training():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(ConfigError, match="privacy.clipping.*tied"):
        _toy_training(Tied(), 1.0, Clipping.GHOST)


@pytest.mark.parametrize("clipping", list(Clipping))
def test_step_that_adds_no_noise_raises(clipping):
    model = nn.Linear(4, 2)
    training = _toy_training(model, 1.0, clipping)
    def step_without_update(*args, **kwargs):  # accounts for the step, then silently changes nothing
        training.optimizer.pre_step()

    training.optimizer.step = step_without_update
    with pytest.raises(PrivacyViolationError, match="did not change"):
        training.step(_toy_loss(training))


def test_results_epsilon_is_reproducible_and_within_target(tiny_classifier, tmp_path):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=target_epsilon", "privacy.epsilon=2.0")
    res = privfed.run(cfg, tmp_path, progress=False)
    for c in res["privacy"]["clients"]:
        eps = epsilon_of_history([(c["noise_multiplier"], c["sample_rate"], c["steps"])], res["final"]["delta"],
                                 Accountant.RDP)
        assert eps == pytest.approx(c["epsilon"], rel=1e-9)
        assert 1.9 <= c["epsilon"] <= 2.0  # calibrated to spend the target over the planned rounds
        assert c["steps"] == cfg.training.rounds * cfg.training.local_steps
    assert res["privacy"]["accountant"] == "opacus.RDPAccountant"


def test_budget_stops_a_client_and_says_so(tiny_classifier, tmp_path):
    cfg = tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise", "privacy.noise_multiplier=1.0",
                          "training.rounds=4")
    probe = privfed.run(cfg, tmp_path / "free", progress=False)
    eps_after = [r["epsilon"] for r in probe["rounds"]]
    cap = (eps_after[1] + eps_after[2]) / 2  # enough for two rounds, not three
    capped = privfed.run(tiny_classifier("model.regime=lora", "privacy.mode=fixed_noise",
                                         "privacy.noise_multiplier=1.0", "training.rounds=4",
                                         f"privacy.max_epsilon={cap}"), tmp_path / "capped", progress=False)
    assert max(c["epsilon"] for c in capped["privacy"]["clients"]) <= cap
    assert any("did not train" in n for n in capped["notes"])
    assert capped["rounds"][-1]["clients_trained"] < len(capped["partition"])
    assert capped["rounds"][0]["clients_trained"] == len(capped["partition"])


def test_dp_off_reports_infinite_epsilon(tiny_classifier, tmp_path):
    res = privfed.run(tiny_classifier("training.rounds=1"), tmp_path, progress=False)
    assert math.isinf(float(res["final"]["epsilon"]))


def test_client_optimizer_enum_is_respected():
    params = [nn.Parameter(torch.zeros(2))]
    kinds = {kind: type(build_optimizer(TrainingConfig(optimizer=kind), params, 0.1)) for kind in ClientOptimizer}
    assert kinds == {ClientOptimizer.SGD: torch.optim.SGD, ClientOptimizer.ADAM: torch.optim.Adam,
                     ClientOptimizer.ADAM_BC: DpAdamBC}
