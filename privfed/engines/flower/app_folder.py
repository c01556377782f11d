"""A Flower app folder for one privfed config: what ``flwr run FOLDER`` ships to the SuperLink and the SuperNodes.

The folder holds a pyproject.toml whose components are privfed's ServerApp and ClientApp (privfed itself is
installed on every machine: ``pip install privfed[flower]``) and whose run config embeds the experiment config as
JSON, so the ServerApp and every ClientApp parse the very same config; a readable copy sits beside it. The nodes
check the config's fingerprint (and may pin it with ``approved-config``) before they train.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import tomli_w

import privfed
from privfed.config import ExperimentConfig, dump_yaml, to_dict
from privfed.engines.flower.apps import AUDIT_KEY, CONFIG_KEY, OUT_KEY, RESUME_KEY
from privfed.engines.flower.wire import fingerprint

SERVER_APP, CLIENT_APP = "privfed.engines.flower.apps:server_app", "privfed.engines.flower.apps:client_app"


def write_app_folder(cfg: ExperimentConfig, folder: Path, out_dir: Path | None = None, audit=None) -> Path:
    """Write ``folder``/pyproject.toml (and privfed-config.yaml, for people) for ``cfg``; returns the folder.

    ``out_dir``: where the ServerApp writes the run (default ``folder``/runs/<name>; taken: -2, -3...). ``audit``:
    :class:`~privfed.audit.settings.AuditSettings` of an audit run (``cfg`` is then the audited config).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = (out_dir or folder / "runs" / cfg.name).resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.name.lower()).strip("-") or "experiment"
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": f"privfed-{slug}", "version": "1.0.0", "license": "Apache-2.0",
                    "description": f"privfed {privfed.__version__}: {cfg.name} (config {fingerprint(cfg)})",
                    "dependencies": []},  # privfed[flower] is installed on every machine; nothing is downloaded
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {"app": {"publisher": "privfed",
                             "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                             "config": {CONFIG_KEY: json.dumps(to_dict(cfg), sort_keys=True), OUT_KEY: str(out),
                                        RESUME_KEY: False,
                                        AUDIT_KEY: json.dumps(audit.as_dict()) if audit is not None else ""}}},
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    (folder / "privfed-config.yaml").write_text(
        f"# The config embedded in pyproject.toml (fingerprint {fingerprint(cfg)}); editing this copy changes "
        f"nothing:\n# write the folder again with `privfed flower app`.\n{dump_yaml(cfg)}")
    return folder
