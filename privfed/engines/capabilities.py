"""Which privfed features run on which engine: the capability matrix of docs/how-to/flower.md, generated from the
checks that refuse.

Each feature is a set of config overrides; each engine answers with the same code that would refuse the run —
config validation for every engine, :func:`~privfed.engines.flower.apps.check_flower_support` for Flower, and
:func:`~privfed.engines.flower.apps.check_flower_simulation` for Flower's simulation runtime. So the matrix cannot
claim what the engines do not do: ``python -m privfed.engines.capabilities`` prints it, and a test compares it with
its page and runs every cell that says "yes".
"""
from __future__ import annotations

from dataclasses import dataclass

from privfed.config import ExperimentConfig, apply_overrides, from_dict, load_config
from privfed.errors import ConfigError


@dataclass(frozen=True)
class Feature:
    name: str
    overrides: tuple[str, ...]
    audit: bool = False  # an audit run (privfed audit; over Flower, privfed flower loopback --audit)


FEATURES = (
    Feature("DP-SGD, plain FedAvg", ()),
    Feature("SecAgg / SecAgg+ with dropouts", ("aggregation=secagg", "aggregation.neighbours=2",
                                               "aggregation.dropout_fraction=0.3")),
    Feature("k-bit words + rotation", ("aggregation=secagg", "aggregation.word_bits=16", "aggregation.rotation=true")),
    Feature("secagg consistency check", ("aggregation=secagg", "aggregation.consistency_check=true")),
    Feature("distributed DP + adaptive clipping", ("aggregation=secagg", "privacy.distributed_noise=0.5",
                                                   "privacy.update_clip=0.5", "privacy.clip_quantile=0.5")),
    Feature("range check + client clip", ("aggregation=secagg", "defence.range_check=true",
                                          "defence.client_clip=1.0")),
    Feature("Paillier", ("aggregation=paillier", "aggregation.key_bits=2048")),
    Feature("robust rule (median)", ("defence.rule=median",)),
    Feature("grouped secagg + robust rule", ("aggregation=secagg", "defence.rule=median", "defence.groups=2")),
    Feature("attack simulation", ("attack.kind=sign_flip", "attack.clients=[0]")),
    Feature("federated evaluation (clients' held-out records)", ("evaluation.where=both",
                                                                  "data.validation_fraction=0.2")),
    Feature("validation split (tuning)", ("data.validation_fraction=0.2",)),
    Feature("privacy audit (canaries, membership)", ("privacy.mode=target_epsilon", "privacy.epsilon=1"), audit=True),
)
ENGINES = ("in process", "Flower simulation", "Flower deployment")


def refusal(cfg: ExperimentConfig, engine: str, audit: bool = False) -> str:
    """Why ``engine`` refuses ``cfg`` (``audit``: an audit run of it; "" when it runs it)."""
    from privfed.audit.scoring import check_auditable
    from privfed.engines.flower.apps import check_flower_simulation, check_flower_support

    try:
        if audit:
            check_auditable(cfg)
        if engine != "in process":
            check_flower_support(cfg)
        if engine == "Flower simulation":
            check_flower_simulation(cfg, audit)
    except ConfigError as err:
        return str(err)
    return ""


def feature_config(feature: Feature, base: dict | None = None) -> ExperimentConfig:
    """The demo (or the config dict ``base``) with the feature switched on."""
    if base is None:
        return load_config(None, list(feature.overrides))
    return from_dict(apply_overrides(base, list(feature.overrides)))


def matrix(base: dict | None = None) -> list[tuple[Feature, dict[str, str]]]:
    """Each feature and, per engine, "" (it runs) or the reason it is refused."""
    return [(feature, {engine: refusal(feature_config(feature, base), engine, feature.audit) for engine in ENGINES})
            for feature in FEATURES]


def markdown() -> str:
    """The matrix as Markdown: "yes", or "no" with a numbered reason (the refusal's own words) listed below it."""
    reasons: list[str] = []
    lines = ["| feature | " + " | ".join(ENGINES) + " |", "|---" * (len(ENGINES) + 1) + "|"]
    for feature, cells in matrix():
        shown = []
        for why in cells.values():
            if why and why not in reasons:
                reasons.append(why)
            shown.append(f"no ({reasons.index(why) + 1})" if why else "yes")
        lines.append(f"| {feature.name} | " + " | ".join(shown) + " |")
    lines += ["", *(f"({i}) `{why.split(': ', 1)[0]}`: {why.split(': ', 1)[-1]}" + ("  " if i < len(reasons) else "")
                    for i, why in enumerate(reasons, start=1))]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
