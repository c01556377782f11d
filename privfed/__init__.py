"""privfed: federated training of language models under differential privacy and secure aggregation.

Typical use::

    import privfed
    cfg = privfed.load_config(overrides=["training.rounds=2"])   # the built-in demo, changed
    results = privfed.run(cfg, "runs/demo")
    print(privfed.summary_table([results]))
"""
from __future__ import annotations

from pathlib import Path

from privfed.config import (
    Accountant,
    Aggregation,
    AggregationConfig,
    ClientOptimizer,
    Clipping,
    Dataset,
    DpMode,
    DropoutStage,
    ExperimentConfig,
    ModelSource,
    Partition,
    Regime,
    Strategy,
    from_dict,
    load_config,
    to_dict,
)
from privfed.errors import (
    ConfigError,
    MissingAssetError,
    PrivacyViolationError,
    PrivfedError,
)

__version__ = "0.1.0"


def run(config: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> dict:
    """Run one federated experiment and write its artefacts to ``out_dir``; returns results.json as a dict.

    ``out_dir`` must not hold an earlier run unless ``resume`` (continue it) or ``overwrite`` (start over) is set.
    """
    from privfed.federation.simulation import run as _run

    return _run(config, Path(out_dir), resume=resume, overwrite=overwrite, progress=progress)


def resume(out_dir: str | Path, *, progress: bool = True) -> dict:
    """Continue an interrupted run from its last checkpoint (same config, same outcome as an uninterrupted run)."""
    from privfed.results import RunDirectory

    return run(RunDirectory(Path(out_dir)).config(), out_dir, resume=True, progress=progress)


def summary_table(results: list[dict]) -> str:
    from privfed.report.tables import markdown_table, summary_rows

    return markdown_table(summary_rows(results))


__all__ = [
    "Accountant",
    "Aggregation",
    "AggregationConfig",
    "ClientOptimizer",
    "Clipping",
    "ConfigError",
    "Dataset",
    "DpMode",
    "DropoutStage",
    "ExperimentConfig",
    "MissingAssetError",
    "ModelSource",
    "Partition",
    "PrivacyViolationError",
    "PrivfedError",
    "Regime",
    "Strategy",
    "__version__",
    "from_dict",
    "load_config",
    "resume",
    "run",
    "summary_table",
    "to_dict",
]
