"""The attack grid's cells: attacks x defences x aggregation methods x privacy settings, and the config each cell
runs (the base config with the cell's ``attack``, ``defence``, ``aggregation`` and ``privacy`` keys set). A cell the
configuration refuses raises ConfigError from :func:`cell_config`: that refusal is one of the grid's findings.
:mod:`privfed.runners.attack_grid` runs the cells; :mod:`privfed.report.attack_grid` draws the table and heat map."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from privfed.config import AttackKind, ExperimentConfig, apply_overrides, from_dict, to_dict


class GridDefence(enum.Enum):
    """A column of the grid: a robust rule, or one of the defences that work under secure aggregation."""

    NONE = "none"
    NORM_BOUND = "norm_bound"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    KRUM = "krum"
    MULTI_KRUM = "multi_krum"
    CENTERED_CLIP = "centered_clip"
    RANGE_CHECK = "range_check"
    CLIENT_CLIP = "client_clip"


class GridAggregation(enum.Enum):
    PLAIN = "plain"  # the server reads every update
    SECAGG = "secagg"  # the server reads one sum
    GROUPED_SECAGG = "grouped_secagg"  # the server reads the sums of GridSettings.groups secagg groups


ROBUST = (GridDefence.NORM_BOUND, GridDefence.MEDIAN, GridDefence.TRIMMED_MEAN, GridDefence.KRUM,
          GridDefence.MULTI_KRUM, GridDefence.CENTERED_CLIP)
TARGETED = (AttackKind.BACKDOOR, AttackKind.SPREAD)


@dataclass(frozen=True)
class GridSettings:
    attacks: tuple[AttackKind, ...] = tuple(AttackKind)
    defences: tuple[GridDefence, ...] = (GridDefence.NONE, GridDefence.NORM_BOUND, GridDefence.MEDIAN,
                                         GridDefence.KRUM, GridDefence.RANGE_CHECK, GridDefence.CLIENT_CLIP)
    aggregations: tuple[GridAggregation, ...] = tuple(GridAggregation)
    epsilons: tuple[float, ...] = (math.inf, 8.0)
    groups: int = 5  # grouped secagg: groups per round
    client_clip: float = 2.0  # the L2 norm honest code clips to (the tiny grid's honest LoRA updates: 2.1-2.6)
    label_flippers: float = 0.3  # label_flip: the share of clients whose labels are flipped
    spread_fraction: float = 0.1  # spread: the share of every client's records poisoned
    warm_start_rounds: int = 0  # > 0: every cell starts from the model of an honest run of that many rounds
    warm_start_lr: float = 0.002  # the warm start's client learning rate (it trains the whole network)
    workers: int = 1  # cells run in parallel processes (each with one torch thread)


@dataclass(frozen=True)
class GridCell:
    attack: AttackKind
    defence: GridDefence
    aggregation: GridAggregation
    epsilon: float

    @property
    def label(self) -> str:
        eps = "nodp" if math.isinf(self.epsilon) else f"eps{self.epsilon:g}"
        return f"{self.attack.value}-{self.aggregation.value}-{self.defence.value}-{eps}"


@dataclass
class CellResult:
    cell: GridCell
    status: str  # "ran" | "refused" | "failed"
    reason: str = ""
    metrics: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        c = self.cell
        return {"attack": c.attack.value, "defence": c.defence.value, "aggregation": c.aggregation.value,
                "epsilon": "inf" if math.isinf(c.epsilon) else c.epsilon, "status": self.status,
                "reason": self.reason, **self.metrics}


def cells(settings: GridSettings) -> list[GridCell]:
    """Every cell the settings name, except the combinations that add nothing: grouped secagg is there for the
    robust rules (its plain mean is secagg's)."""
    out = []
    for epsilon in settings.epsilons:
        for attack in settings.attacks:
            for aggregation in settings.aggregations:
                for defence in settings.defences:
                    if aggregation is GridAggregation.GROUPED_SECAGG and defence not in ROBUST:
                        continue
                    out.append(GridCell(attack, defence, aggregation, epsilon))
    return out


def cell_config(base: ExperimentConfig, cell: GridCell, settings: GridSettings) -> ExperimentConfig:
    """``base`` with the cell's attack, defence, aggregation and privacy (ConfigError when it refuses them)."""
    raw = to_dict(base)
    n, rounds = base.partition.num_clients, base.training.rounds
    last = base.attack.last_round or max(1, rounds - 1)
    first = base.attack.first_round if base.attack.last_round else max(1, last - 1)
    sets = [f"name={base.name}-{cell.label}", f"attack.kind={cell.attack.value}"]
    if cell.attack is not AttackKind.NONE:
        attackers = {AttackKind.LABEL_FLIP: list(range(max(1, round(settings.label_flippers * n)))),
                     AttackKind.SPREAD: list(range(n))}.get(cell.attack, list(base.attack.clients))
        sets += [f"attack.clients={attackers}", f"attack.first_round={first}", f"attack.last_round={last}"]
        if cell.attack is AttackKind.SPREAD:
            sets.append(f"attack.poison_fraction={settings.spread_fraction}")
    if math.isinf(cell.epsilon):
        sets.append("privacy.mode=off")
    else:
        sets += ["privacy.mode=target_epsilon", f"privacy.epsilon={cell.epsilon}"]
    method = "plain" if cell.aggregation is GridAggregation.PLAIN else "secagg"
    sets.append(f"aggregation.method={method}")
    if cell.aggregation is GridAggregation.GROUPED_SECAGG:
        sets.append(f"defence.groups={settings.groups}")
    if cell.defence in ROBUST:
        sets.append(f"defence.rule={cell.defence.value}")
    elif cell.defence is GridDefence.RANGE_CHECK:
        sets.append("defence.range_check=true")
    elif cell.defence is GridDefence.CLIENT_CLIP:
        sets.append(f"defence.client_clip={settings.client_clip}")
    return from_dict(apply_overrides(raw, sets))
