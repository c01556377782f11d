"""The audit run: canaries pass through Opacus' mechanism, faults are flagged, the CLI writes audit.json/audit.md
and exits 3 on a violation, the sweep shows ε_lb beside ε."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import TINY_CAUSAL, TINY_CLASSIFIER, make_config

from privfed.audit.canaries import CanaryDesign, CanaryInstrument
from privfed.audit.repeat import repeated_one_run
from privfed.audit.report import AUDIT_JSON, AUDIT_TABLE, Verdict
from privfed.runners.audit import run_audit
from privfed.audit.settings import AuditKind, AuditSettings, MechanismFault
from privfed.audit.target import prepare_target
from privfed.cli import main
from privfed.runners.sweep import summarize, write_report
from privfed.federation.setup import build_federation
from privfed.privacy.dpsgd import expected_batch_size, poisson_sample_rate
from privfed.results import RunDirectory
from privfed.run_result import read_results

# the audited mechanism: q = 1/5 (batch 12 of client 0's 55 examples), 20 rounds of one SGD step, ε = 1
MECHANISM = ("privacy.mode=target_epsilon", "privacy.epsilon=1", "model.regime=lora", "training.optimizer=sgd",
             "training.lr=0.5", "training.rounds=20", "training.local_steps=1", "training.batch_size=12",
             "partition.num_clients=2", "data.max_examples=120", "data.eval_examples=8")


@pytest.fixture(scope="module")
def mechanism():
    fed = build_federation(make_config(TINY_CLASSIFIER, *MECHANISM))
    assert 0.2 <= fed.clients[0].sample_rate <= 0.25
    return fed


def _canary_shift(fed, fault: MechanismFault) -> tuple[np.ndarray, np.ndarray]:
    """Client 0's round-1 update with canaries minus the same round with none included (same fault, same batches,
    same noise: the canaries draw from their own generator)."""
    client = fed.clients[0]
    shard = fed.shard(client)
    design = CanaryDesign.draw(200, fed.num_trainable, np.random.default_rng(3))
    deltas = []
    for included in (np.zeros_like(design.included), design.included):
        instrument = CanaryInstrument(CanaryDesign(design.coordinates, included), fed.runtime.params, 1.0, 10.0,
                                      fault, seed=5)
        fed.runtime.instruments[client.id] = instrument  # the runtime starts its round
        try:
            deltas.append(fed.runtime.train(client, shard, 1, fed.initial_vector, []).update.delta)
        finally:
            fed.runtime.instruments.clear()
    return (deltas[1] - deltas[0])[design.coordinates], design.included


@pytest.mark.parametrize("fault, norm", [(MechanismFault.NOISE_OFF, 1.0), (MechanismFault.CLIPPING_OFF, 10.0)])
def test_canaries_are_clipped_and_summed_by_opacus(mechanism, fault, norm):
    """A sampled canary moves its coordinate by -lr * (its clipped norm) / B; an excluded one not at all.

    With clipping working (NOISE_OFF keeps the clip, drops the noise so the shift is exact) a canary of norm 10C
    counts C; with CLIPPING_OFF (noise on, but the same noise in both runs) it counts 10C."""
    shift, included = _canary_shift(mechanism, fault)
    client = mechanism.clients[0]
    step = 0.5 * norm / expected_batch_size(client.num_examples, 12)  # lr * clipped norm / expected batch size
    assert np.allclose(shift[~included], 0.0, atol=1e-6)
    moved = shift[included]
    assert np.allclose(moved[np.abs(moved) > 1e-6], -step, rtol=1e-3)
    share = float(np.mean(np.abs(moved) > 1e-6))
    assert 0.05 < share < 0.4  # Poisson-sampled at q = 0.2 like the real examples


def test_noise_off_is_flagged_at_epsilon_1(mechanism):
    """Noise silently skipped (the ledger and accountant still claim ε ≈ 1): the audit must contradict it."""
    [found] = repeated_one_run(mechanism, [0], canaries=1000, fault=MechanismFault.NOISE_OFF)
    assert found.claimed_epsilon == pytest.approx(1.0, abs=0.01)
    assert found.violation, found.bound


def test_intact_mechanism_is_not_flagged(mechanism):
    [found] = repeated_one_run(mechanism, [1], canaries=1000)
    assert not found.violation and found.bound.epsilon_steinke < 0.5, found.bound


@pytest.mark.parametrize("fault", [MechanismFault.NOISE_QUARTER, MechanismFault.SAMPLING_4X,
                                   MechanismFault.CLIPPING_OFF])
def test_each_subtler_fault_is_flagged_at_epsilon_1(mechanism, fault):
    """σ/4, sampling at 4q, no clipping: the accountant still claims ε ≈ 1; 4,000 canaries must contradict it."""
    [found] = repeated_one_run(mechanism, [0], canaries=4000, fault=fault)
    assert found.claimed_epsilon == pytest.approx(1.0, abs=0.01)
    assert found.violation, (fault, found.bound)


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [1, 3, 8])
def test_twenty_seeds_never_flag_the_intact_mechanism(epsilon):
    fed = build_federation(make_config(TINY_CLASSIFIER, *MECHANISM, f"privacy.epsilon={epsilon}"))
    found = repeated_one_run(fed, range(20), canaries=1000)
    ratios = [f.bound.epsilon_steinke / f.claimed_epsilon for f in found]
    print(f"ε={epsilon}: ε_lb/ε mean {np.mean(ratios):.3f}, max {max(ratios):.3f}")
    assert not any(f.violation for f in found)


def _config_file(tmp_path, base: dict, *overrides: str):
    cfg = yaml.safe_load(yaml.safe_dump(base))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, [a for o in overrides for a in ("--set", o)]


def test_privfed_audit_cli_exit_status_and_files(tmp_path, capsys):
    path, sets = _config_file(tmp_path, TINY_CLASSIFIER, "privacy.mode=target_epsilon", "privacy.epsilon=1",
                              "model.regime=lora", "data.eval_examples=8", "training.optimizer=sgd",
                              "training.lr=0.5")
    args = ["audit", "--config", str(path), *sets, "--canaries", "400", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    report = json.loads((tmp_path / "ok" / AUDIT_JSON).read_text())
    assert not report["violation"]
    audits = {r["audit"] for r in report["rows"]}
    assert audits == {"one-run ε lower bound", "membership inference", "canary exposure", "reconstruction"}
    assert "| audit | observed |" in (tmp_path / "ok" / AUDIT_TABLE).read_text()
    assert (tmp_path / "ok" / "results.json").is_file()
    assert main([*args, "--out", str(tmp_path / "bad"), "--fault", "noise_off", "--audits", "one_run"]) == 3
    assert "privfed: VIOLATION" in capsys.readouterr().err  # the diagnostic on stderr, the table on stdout
    assert main([*args, "--out", str(tmp_path / "x"), "--audits", "nonsense"]) == 2
    # refused before anything is written: a fault needs DP to break
    assert main([*args, "--out", str(tmp_path / "y"), "--fault", "noise_off", "--set", "privacy.mode=off"]) == 2
    assert not (tmp_path / "y").exists()


def test_membership_split_holds_non_members_out_of_all_training(tiny_classifier):
    fed = build_federation(tiny_classifier("data.eval_examples=8"))
    original = fed.clients[0].shard.copy()
    target = prepare_target(fed, AuditSettings(audits=frozenset({AuditKind.MEMBERSHIP})))
    trained = fed.clients[0].shard
    assert set(target.members) <= set(trained) and not set(target.nonmembers) & set(trained)
    assert set(target.members) | set(target.nonmembers) <= set(original) and set(trained) <= set(original)
    everyone_else = set(np.concatenate([c.shard for c in fed.clients]))
    assert not set(target.nonmembers) & everyone_else  # no client trains on a held-out example
    rows = {bytes(r) for r in fed.pool.tensors[0][np.concatenate([target.members, target.nonmembers])].numpy()}
    assert len(rows) == target.members.size + target.nonmembers.size  # every tested text is unique
    assert fed.clients[0].sample_rate == poisson_sample_rate(trained.size, fed.config.training.batch_size)


def test_causal_lm_audit_has_exposure_and_token_reconstruction(tmp_path):
    cfg = make_config(TINY_CAUSAL, "data.source=bbc_news", "partition.scheme=dirichlet", "data.eval_examples=8",
                      "aggregation=secagg")
    kinds = frozenset({AuditKind.MEMBERSHIP, AuditKind.EXPOSURE, AuditKind.RECONSTRUCTION})
    report = run_audit(cfg, tmp_path / "a", AuditSettings(audits=kinds, secret_digits=3, secrets_per_count=1),
                       progress=False)
    exposure = [r for r in report.rows if r.audit == "canary exposure"]
    assert next(("16×" in r.observed, "never" in r.observed) for r in exposure) == (True, False)
    assert all(0 <= r.value <= np.log2(1_000) + 1e-9 for r in exposure)
    plain = report.find("reconstruction", "client 0's update (a plain upload)", "token-set F1")
    assert plain.value > 0.5  # no DP: the changed embedding rows are tokens it used (its shard's: recall < 1)
    masked = report.find("reconstruction", "client 0's upload as the server reads it (secagg)", "token-set F1")
    assert masked.value < 0.1  # masked words: every row looks changed, the attack guesses every token
    assert {AuditKind.MEMBERSHIP.value, AuditKind.EXPOSURE.value} <= set(report.settings["audits"])
    assert report.find("membership inference", "the final model", "AUC (min_k_plus_plus)").verdict is Verdict.MEASURED


def test_sweep_with_audit_shows_epsilon_lower_bounds(tmp_path, capsys):
    path, sets = _config_file(tmp_path, TINY_CLASSIFIER, "model.regime=lora", "data.eval_examples=8",
                              "training.rounds=1")
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(path), *sets, "--epsilons", "1,inf", "--audit", "--audits",
                 "one_run,membership", "--canaries", "300", "--out", str(out), "--no-progress"]) == 0
    table = (out / "table.md").read_text()
    assert "ε_lb" in table and "MIA AUC" in table
    assert (out / "audit_epsilon.png").stat().st_size > 0
    assert RunDirectory(out / "tiny-bert-eps1").config().name == "tiny-bert-eps1-audit"  # never reused as plain
    runs = [read_results(out / name) for name in ("tiny-bert-eps1", "tiny-bert-epsinf")]
    write_report(summarize(runs), tmp_path / "report")  # runs without an audit: no ε_lb plot, no crash
    assert not (tmp_path / "report" / "audit_epsilon.png").exists()
    no_dp = json.loads((out / "tiny-bert-epsinf" / AUDIT_JSON).read_text())
    steinke = next(r for r in no_dp["rows"] if r["metric"].startswith("ε_lb (Steinke)"))
    assert float(steinke["value"]) > 2  # without DP the canaries are found: the bound is only m-limited
