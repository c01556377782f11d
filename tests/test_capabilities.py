"""The docs' capability matrix (docs/how-to/flower.md) is what the refusing checks say, and every cell it calls "yes" runs."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY_CLASSIFIER
from flower_helpers import LocalLink

from privfed.config import Aggregation, apply_overrides
from privfed.engines.capabilities import ENGINES, FEATURES, feature_config, markdown, matrix
from privfed.engines.flower.clients import run_over_link
from privfed.engines.inprocess import run
from privfed.secure.paillier_keys import PaillierKey, public_key_path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "flower.md"  # the matrix's page
# tiny sizes: 4 clients (grouped aggregation needs groups of 2), one round, LoRA (Paillier encrypts every value)
TINY = apply_overrides(TINY_CLASSIFIER, ["partition.num_clients=4", "training.rounds=1", "model.regime=lora"])


def test_the_readme_shows_the_matrix_the_checks_make():
    assert markdown() in PAGE.read_text()
    cells = dict(matrix())
    assert all(not why for why in (cells[f]["in process"] for f in FEATURES))  # the reference engine runs all
    assert any(why for row in cells.values() for why in row.values())  # and the matrix does refuse something


@pytest.mark.parametrize("feature", FEATURES, ids=[f.name for f in FEATURES])
def test_every_yes_cell_runs(feature, tmp_path):
    """In process, and over Flower's message path (nodes in this process) for the Flower cells that say yes — the
    same path a simulation's and a deployment's nodes take; the real-process deployment is test_flower_deployment."""
    from privfed.secure.identities import key_file, write_identities

    cfg = feature_config(feature, TINY)
    cells = dict(matrix(TINY))[feature]
    assert set(cells) == set(ENGINES)
    if feature.audit:
        assert not cells["Flower deployment"]
        _audit_over_flower_equals_in_process(cfg, tmp_path)
        return
    result = run(cfg, tmp_path / "in-process", progress=False)
    assert result["rounds"][0]["clients_trained"] > 0
    if cells["Flower deployment"] and cells["Flower simulation"]:
        return
    nodes = [{"partition-id": i, **({"simulate-attack": True} if i in cfg.attack.clients else {})}
             for i in range(cfg.partition.num_clients)]
    if cfg.aggregation.consistency_check:
        directory = write_identities(tmp_path / "keys", len(nodes))
        nodes = [{**node, "identity-key": str(key_file(directory.parent, i)), "directory": str(directory)}
                 for i, node in enumerate(nodes)]
    if cfg.aggregation.method is Aggregation.PAILLIER:  # the nodes hold the pair, the server its public half
        pair = PaillierKey.generate(cfg.aggregation.key_bits)
        pair_path = pair.save(tmp_path / "key.json")
        public = pair.public().save(public_key_path(pair_path))
        cfg = replace(cfg, aggregation=replace(cfg.aggregation, key_file=str(public)))
        nodes = [{**node, "paillier-key": str(pair_path)} for node in nodes]
    flower = run_over_link(cfg, tmp_path / "flower", LocalLink(cfg, nodes))
    assert flower["rounds"][0]["clients_trained"] > 0
    if cfg.privacy.distributed_noise == 0:  # the same model as in process (distributed noise is fresh entropy)
        assert flower["rounds"][0]["eval_loss"] == pytest.approx(result["rounds"][0]["eval_loss"], rel=1e-3)


def _audit_over_flower_equals_in_process(cfg, tmp_path):
    """The audited node (audit=true) builds the same members and canaries, starts its canary round where it trains
    and sends its own update to the researcher: the report equals the in-process audit's, row for row."""
    from privfed.runners.audit import run_audit
    from privfed.audit.settings import AuditKind, AuditSettings, audited_config
    from privfed.engines.flower.clients import audit_over_link

    settings = AuditSettings(audits=frozenset({AuditKind.ONE_RUN, AuditKind.MEMBERSHIP}), client=1, canaries=200)
    local = run_audit(cfg, tmp_path / "in-process", settings, progress=False)
    audited = audited_config(cfg, settings)
    nodes = [{"partition-id": i, **({"audit": True} if i == settings.client else {})}
             for i in range(cfg.partition.num_clients)]
    flower = audit_over_link(audited, tmp_path / "flower", LocalLink(audited, nodes), settings)
    assert flower.rows == local.rows and flower.claimed_epsilon == local.claimed_epsilon
    # scored on the update the node reported (a node that sent none would leave "the client never trained")
    assert "client 1's update (a plain upload), 1 round(s)" in {row.observed for row in flower.rows}
