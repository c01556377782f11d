"""The run directory: resolved config, per-round metrics, the ledger, checkpoints and results.json.

Every file is written to a temporary name and renamed, so a run killed at any moment leaves the previous complete
version of each file and ``privfed run --resume DIR`` continues from the last finished round.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privfed.config import DpMode, EvaluationSite, ExperimentConfig, RecordFormat, dump_yaml, load_config, to_dict
from privfed.errors import ConfigError

if TYPE_CHECKING:
    from privfed.federation.setup import Federation
    from privfed.server.events import RunState

CONFIG, METRICS, LEDGER, RESULTS, CHECKPOINT = "config.yaml", "metrics.csv", "ledger.jsonl", "results.json", \
    "checkpoint.npz"
GENERATIONS = "generations.jsonl"  # chat data: held-out answers, one line per (round, prompt)
LEGACY_CHECKPOINT = "checkpoint.pkl"  # written by privfed < 0.2; refused, never unpickled
METRIC_COLUMNS = ["round", "clients_trained", "clients_skipped", "clients_aggregated", "dropouts", "train_loss",
                  "eval_loss", "eval_accuracy", "eval_perplexity", "fed_loss", "fed_accuracy", "fed_perplexity",
                  "fed_clients", "val_loss", "val_accuracy", "val_perplexity",
                  "attack_success_rate", "target_rate_clean", "epsilon", "user_epsilon", "bytes_up", "bytes_down", "bytes_up_per_client", "bytes_down_per_client",
                  "aggregation_seconds", "seconds"]


QUALITY_KEYS = ("eval_accuracy", "eval_perplexity", "fed_accuracy", "fed_perplexity")


def quality_key(metrics: dict) -> str:
    """The quality metric of a run's ``final`` or of a round's row: the server's held-out score (eval_*), else the
    federation's, from the clients' own held-out records (fed_*: evaluation.where clients)."""
    return next((k for k in QUALITY_KEYS if k in metrics), "eval_accuracy")


def loss_key(quality: str) -> str:
    """The loss beside a quality metric: eval_loss or fed_loss."""
    return quality.split("_", 1)[0] + "_loss"


def metric_as(metric: str, prefix: str) -> str:
    """The same measure on other records: ``metric_as("eval_accuracy", "val_")`` is the tuner's validation
    accuracy, ``"fed_"`` the clients' federated evaluation."""
    return prefix + metric.split("_", 1)[1]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def versions() -> dict[str, str]:
    out = {}
    for name in ("privfed", "torch", "opacus", "transformers", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def jsonable(value: Any) -> Any:
    """inf/nan become strings so results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


AUDIT_FILES = ("audit.json", "audit.md")  # privfed audit's report: removed when a new run starts in the directory


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)

    def holds_run(self) -> bool:
        """True once a run has started here (its resolved config is the first file written)."""
        return (self.path / CONFIG).is_file()

    def start(self, cfg: ExperimentConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, LEGACY_CHECKPOINT, RESULTS, METRICS, LEDGER, GENERATIONS, *AUDIT_FILES):
            (self.path / name).unlink(missing_ok=True)
        _atomic_write(self.path / CONFIG, dump_yaml(cfg).encode())

    def config(self) -> ExperimentConfig:
        return load_config(self.path / CONFIG)

    def save_checkpoint(self, state: RunState) -> None:
        """The run state as plain data in one file written atomically: arrays, plus JSON (rounds, notes, ledger)
        stored as bytes. No pickle: loading it runs no code and it does not break when privfed's classes move."""
        meta = {"completed_rounds": state.completed_rounds, "rows": state.rows, "notes": state.notes,
                "initial": state.initial, "ledger": state.ledger.to_dicts(),
                "strategy_keys": sorted(state.strategy_state)}
        arrays = {f"strategy.{k}": v for k, v in state.strategy_state.items()}
        buf = io.BytesIO()
        np.savez(buf, global_vector=state.global_vector, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **arrays)
        _atomic_write(self.path / CHECKPOINT, buf.getvalue())
        _atomic_write(self.path / LEDGER, state.ledger.to_jsonl().encode())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in state.rows:
            writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        _atomic_write(self.path / METRICS, buf.getvalue().encode())

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def load_checkpoint(self) -> RunState | None:
        from privfed.privacy.ledger import Ledger
        from privfed.server.events import RunState

        path = self.path / CHECKPOINT
        if not path.is_file():
            if (self.path / LEGACY_CHECKPOINT).is_file():
                raise ConfigError("--resume", f"{self.path} holds a checkpoint of privfed before 0.2 (a pickle), "
                                              "which this version does not load; start the run over (--overwrite)")
            return None
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
            return RunState(completed_rounds=meta["completed_rounds"], global_vector=archive["global_vector"],
                            strategy_state={k: archive[f"strategy.{k}"] for k in meta["strategy_keys"]},
                            ledger=Ledger.from_dicts(meta["ledger"]), rows=meta["rows"], notes=meta["notes"],
                            initial=meta["initial"])

    def generations(self) -> list[dict]:
        """Every line of generations.jsonl ([] when there is none)."""
        path = self.path / GENERATIONS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def save_generations(self, round_idx: int, lines: list[dict]) -> None:
        """Write ``round_idx``'s generations in place of any earlier lines of that round or later ones (a round
        redone after a resume), so no round is ever listed twice."""
        kept = [g for g in self.generations() if g["round"] < round_idx]
        text = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in [*kept, *lines])
        _atomic_write(self.path / GENERATIONS, text.encode("utf-8"))

    def last_generations(self) -> list[dict]:
        """The last round's generations ([] when there are none)."""
        lines = self.generations()
        return [g for g in lines if g["round"] == lines[-1]["round"]] if lines else []

    def finish(self, results: dict) -> None:
        _atomic_write(self.path / RESULTS, (json.dumps(jsonable(results), indent=2) + "\n").encode())


def build_results(fed: Federation, state: RunState, epsilons: dict[int, float], seconds: float,
                  user_epsilons: dict[int, float], generations: list[dict]) -> dict:
    """results.json: config, versions, model, partition, every round, the final metrics and privacy, and the last
    round's ``generations`` (chat data). For a causal LM, ``final.perplexity_over`` says which tokens the loss and
    perplexity score: all tokens of a text, or the assistant's tokens of a chat."""
    from privfed.privacy.accounting import ACCOUNTANT_NAMES  # Opacus: imported only when a run has ended

    cfg = fed.config
    pr = cfg.privacy
    clients = []
    for client in fed.clients:
        events = state.ledger.dp_sgd(client.id)
        clients.append({
            "client": client.id,
            "examples": client.num_examples,
            "noise_multiplier": client.noise_multiplier if client.noise_multiplier is not None else 0.0,
            "max_grad_norm": pr.max_grad_norm,
            "sample_rate": client.sample_rate,
            "steps": sum(e.steps for e in events),
            "rounds_trained": len(events),
            "epsilon": epsilons[client.id],
            "user_epsilon": user_epsilons[client.id],
        })
    last = state.rows[-1] if state.rows else {}
    metric = "eval_accuracy" if fed.task.value == "classification" else "eval_perplexity"
    scored = {} if metric == "eval_accuracy" else {
        "perplexity_over": "assistant tokens" if cfg.data.records is not RecordFormat.TEXT else "all tokens"}
    federated = {k: last[k] for k in ("fed_loss", metric_as(metric, "fed_"), "fed_clients") if k in last}
    if cfg.evaluation.where is EvaluationSite.CLIENTS:  # no server evaluation: the federation's totals only
        metric = metric_as(metric, "fed_")
    validation = metric_as(metric, "val_")
    if validation in last:  # tuning's validation split, carved from the clients' training data
        scored[validation] = last[validation]
    return {
        "config": to_dict(cfg),
        "versions": versions(),
        "model": {"source": cfg.model.source, "regime": cfg.model.regime.value,
                  "trainable_tensors": len(fed.trainable_names), "trainable_parameters": fed.num_trainable,
                  "bytes_per_transfer": fed.num_trainable * 4, "trainable_names": fed.trainable_names},
        "partition": fed.partition_summary,
        "initial": state.initial,
        "rounds": state.rows,
        "final": {metric: last.get(metric), loss_key(metric): last.get(loss_key(metric)), **federated,
                  "epsilon": max(epsilons.values(), default=0.0), "delta": pr.delta,
                  "dp": pr.mode is not DpMode.OFF,
                  "user_epsilon": max(user_epsilons.values(), default=0.0), **scored},
        "privacy": {"mode": pr.mode.value, "accountant": ACCOUNTANT_NAMES[pr.accountant], "delta": pr.delta,
                    "target_epsilon": pr.epsilon if pr.mode is DpMode.TARGET_EPSILON else None,
                    "distributed_noise": pr.distributed_noise,
                    "update_clip": pr.update_clip if pr.distributed_noise > 0 else None,
                    "adaptive_clipping": {"quantile": pr.clip_quantile, "learning_rate": pr.clip_learning_rate,
                                          "count_noise": pr.clip_count_noise, "max_update_clip": pr.max_update_clip}
                    if pr.distributed_noise > 0 and pr.clip_quantile > 0 else None,
                    "user_level_accounting": "Skellam RDP (Agarwal et al. 2021) + opacus get_privacy_spent"
                    if pr.distributed_noise > 0 else None,
                    "clients": clients},
        "aggregation": to_dict(cfg.aggregation),
        "notes": state.notes,
        "generations": generations,
        "seconds": seconds,
        "ledger_events": len(state.ledger.events),
    }


def refuse_replacing(jobs: Iterable[tuple[ExperimentConfig, Path]], overwrite: bool) -> None:
    """Before a command that reuses its output directory (sweep, attack grid) runs anything: ConfigError when a
    job's directory holds a run of another config, which running the job would replace — unless ``overwrite``."""
    if overwrite:
        return
    replaced = [path for cfg, path in jobs if RunDirectory(path).holds_run() and RunDirectory(path).config() != cfg]
    if replaced:
        shown = ", ".join(str(p) for p in replaced[:3]) + (f" and {len(replaced) - 3} more" if len(replaced) > 3 else "")
        raise ConfigError("--out", f"{shown} hold(s) a run of another config: pass --overwrite to start them over, "
                                   "or write elsewhere (--out)")


def unused_run_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : a default output directory never replaces an earlier run."""
    candidate, n = base, 1
    while RunDirectory(candidate).holds_run():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
