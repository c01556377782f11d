import numpy as np
import pytest

from privfed.config import FederationConfig, Strategy
from privfed.server.strategies import make_strategy


def test_fedavg_applies_the_mean_update():
    s = make_strategy(FederationConfig(strategy=Strategy.FEDAVG, server_lr=0.5))
    assert np.allclose(s.apply(np.ones(3), np.array([2.0, 0.0, -2.0])), [2.0, 1.0, 0.0])


@pytest.mark.parametrize("strategy", [Strategy.FEDADAM, Strategy.FEDYOGI])
def test_adaptive_strategies_take_sign_like_first_steps(strategy):
    cfg = FederationConfig(strategy=strategy, server_lr=0.1, server_beta1=0.0, server_tau=1e-6)
    s = make_strategy(cfg)
    out = s.apply(np.zeros(2), np.array([5.0, -0.01]))
    assert out[0] > 0 > out[1]
    assert abs(out[0]) > 0.1 and abs(out[1]) > 0.1  # adaptive: the small coordinate moves as far as the large one
    state = s.state_dict()
    fresh = make_strategy(cfg)
    fresh.load_state_dict(state)
    assert np.allclose(fresh.apply(out, np.ones(2)), s.apply(out, np.ones(2)))


def test_fedprox_pulls_towards_the_global_model(tiny_classifier):
    from privfed.federation.setup import build_federation

    drift = {}
    for mu in (0.0, 50.0):
        fed = build_federation(tiny_classifier("training.optimizer=sgd", "training.lr=0.01", f"training.prox_mu={mu}"))
        client = fed.clients[0]
        trained = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, [])
        drift[mu] = np.linalg.norm(trained.update.delta)
    assert drift[50.0] < 0.8 * drift[0.0]
