"""The attack grid's warm start: one honest federated run whose final network every cell starts from."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

from privfed.config import ExperimentConfig, Regime, apply_overrides, from_dict, to_dict
from privfed.errors import ConfigError
from privfed.results import jsonable
from privfed.server.events import Callback, RoundRecord, RunState


class _FinalVector(Callback):
    def __init__(self) -> None:
        self.vector = None

    def on_round_committed(self, record: RoundRecord, state: RunState) -> None:
        self.vector = state.global_vector.copy()


def warm_start(base: ExperimentConfig, out_dir: Path, rounds: int, lr: float) -> ExperimentConfig:
    """``base`` starting from the network of an honest federated run of ``rounds`` rounds at client learning rate
    ``lr`` that trains all of it (no attack, no DP, plain aggregation): Bagdasaryan et al.'s setting, where the
    attack hits a model that has learned its task. The weights go to ``model.init_weights`` (a file named by the
    warm run's config, so cells made from another warm start never match); the cells then train in ``base``'s
    regime (LoRA adapters on the warm network, say)."""
    if base.model.regime is Regime.PROMPT or base.model.init_weights:
        raise ConfigError("--warm-start-rounds", "warm-starts by training the whole network, then sets "
                                                 "model.init_weights: not with the prompt regime or weights of "
                                                 "your own; use 0")
    regime = "pretrain" if base.model.regime is Regime.PRETRAIN else "full"
    cfg = from_dict(apply_overrides(to_dict(base), [
        f"name={base.name}-warm-start", f"training.rounds={rounds}", f"training.lr={lr}", f"model.regime={regime}",
        "attack.kind=none", "privacy.mode=off", "aggregation.method=plain", "defence.rule=mean", "defence.groups=0",
        "defence.range_check=false", "defence.client_clip=0"]))
    folder = out_dir / "warm-start"
    digest = hashlib.sha256(json.dumps(jsonable(to_dict(cfg)), sort_keys=True).encode()).hexdigest()[:12]
    weights = folder / f"weights-{digest}.safetensors"
    if not weights.is_file():
        from safetensors.torch import save_model

        from privfed.engines.inprocess import run
        from privfed.federation.setup import build_federation

        final = _FinalVector()
        with contextlib.redirect_stdout(io.StringIO()):  # its round lines are in its results
            run(cfg, folder / "run", overwrite=True, progress=False, callbacks=(final,))
        fed = build_federation(cfg)
        fed.runtime.load(final.vector)
        partial = weights.with_suffix(".partial")
        save_model(fed.runtime.model, str(partial))
        partial.replace(weights)
    after = "full" if base.model.regime is Regime.PRETRAIN else base.model.regime.value
    return from_dict(apply_overrides(to_dict(base), [f"model.init_weights={weights.resolve()}",
                                                     f"model.regime={after}"]))
