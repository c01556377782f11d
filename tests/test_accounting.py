"""epsilon from the ledger equals Opacus' own accountant and Google's dp_accounting for the same (sigma, q, T)."""
import math

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant

from privfed.config import Accountant
from privfed.privacy.accounting import calibrate_noise, epsilon_of_events, history_of
from privfed.privacy.ledger import DpSgdEvent, Ledger, SkippedEvent


def _events(sigma, q, rounds, steps):
    return [DpSgdEvent(client=0, round=r, noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)
            for r in range(1, rounds + 1)]


@pytest.mark.parametrize("sigma, q, rounds, steps", [(1.0, 0.1, 3, 10), (0.7, 0.05, 5, 20), (2.0, 0.5, 2, 4)])
def test_ledger_epsilon_matches_opacus_stepping(sigma, q, rounds, steps):
    reference = RDPAccountant()
    for _ in range(rounds * steps):
        reference.step(noise_multiplier=sigma, sample_rate=q)
    ours = epsilon_of_events(_events(sigma, q, rounds, steps), 1e-5, Accountant.RDP)
    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


@pytest.mark.parametrize("sigma, q, total", [(1.0, 0.1, 30), (0.8, 0.02, 200)])
def test_ledger_epsilon_matches_dp_accounting(sigma, q, total):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), total)
    google = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    ours = epsilon_of_events(_events(sigma, q, 1, total), 1e-5, Accountant.RDP)
    assert ours == pytest.approx(google, rel=0.05)  # different RDP order grids: agree to a few per cent
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3).compose(event).get_epsilon(1e-5)
    prv = epsilon_of_events(_events(sigma, q, 1, total), 1e-5, Accountant.PRV)
    assert prv == pytest.approx(pld, rel=0.05)  # PRV and PLD are both near-exact
    assert prv <= ours  # RDP is an upper bound


def test_calibrated_noise_meets_target():
    sigma = calibrate_noise(3.0, 1e-5, 0.1, 60, Accountant.RDP)
    eps = epsilon_of_events(_events(sigma, 0.1, 1, 60), 1e-5, Accountant.RDP)
    assert 2.95 <= eps <= 3.0


def test_history_merges_equal_mechanisms_like_opacus():
    events = _events(1.0, 0.1, 2, 3) + _events(2.0, 0.1, 1, 4)
    assert history_of(events) == [(1.0, 0.1, 6), (2.0, 0.1, 4)]


def test_no_noise_is_infinite_epsilon_and_no_steps_is_zero():
    assert math.isinf(epsilon_of_events(_events(0.0, 0.1, 1, 3), 1e-5, Accountant.RDP))
    assert epsilon_of_events([], 1e-5, Accountant.RDP) == 0.0


def test_ledger_round_trips(tmp_path):
    ledger = Ledger(_events(1.0, 0.1, 2, 3))
    ledger.append(SkippedEvent(client=1, round=3, epsilon_if_trained=9.0, budget=8.0))
    ledger.write(tmp_path / "ledger.jsonl")
    assert Ledger.read(tmp_path / "ledger.jsonl").events == ledger.events
