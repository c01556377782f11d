"""What an audit run measures and how: a typed, frozen description made from ``privfed audit``'s flags.

Torch-free, so the CLI validates its flags before the heavy imports."""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from privfed.config import ExperimentConfig
from privfed.errors import ConfigError


class MechanismFault(enum.Enum):
    """A DP-SGD bug the audit must flag: the ledger still records the configured σ, q and C."""

    NONE = "none"
    NOISE_OFF = "noise_off"  # no Gaussian noise (privfed's own "did noise move every tensor" check is bypassed)
    NOISE_QUARTER = "noise_quarter"  # σ / 4
    SAMPLING_4X = "sampling_4x"  # Poisson sampling at 4q while the accountant assumes q
    CLIPPING_OFF = "clipping_off"  # per-sample gradients not clipped (noise still scaled to C)


class AuditKind(enum.Enum):
    ONE_RUN = "one_run"  # ε lower bound from Dirac canaries (white box: the update and the sum)
    MEMBERSHIP = "membership"  # membership inference on the final model
    EXPOSURE = "exposure"  # inserted secrets' exposure (causal language models)
    RECONSTRUCTION = "reconstruction"  # token set and label mix from what the server reads


class AuditProfile(enum.Enum):
    """``overfit``: few examples, many local steps — a setting where the no-DP attacks visibly work on 2 cores."""

    AS_CONFIGURED = "as_configured"
    OVERFIT = "overfit"


ALL_AUDITS = frozenset(AuditKind)


@dataclass(frozen=True)
class AuditSettings:
    audits: frozenset[AuditKind] = ALL_AUDITS
    client: int = 0  # the audited client: its data holds the members, secrets and canaries
    canaries: int = 1000  # m Dirac canaries, each included with probability 1/2
    canary_norm: float = 10.0  # a canary's gradient norm before clipping, in units of C (clipped to C when it works)
    confidence: float = 0.95
    fault: MechanismFault = MechanismFault.NONE  # tests the auditor: a DP-SGD bug the audit must flag
    secret_insertions: tuple[int, ...] = (1, 4, 16)  # how often each secret is inserted into the client's data
    secrets_per_count: int = 2  # secrets at each insertion count, and as many never-inserted controls
    secret_digits: int = 6
    profile: AuditProfile = AuditProfile.AS_CONFIGURED
    seed: int = 0  # the audit's own choices (members, canaries, secrets), apart from the run's seed

    def __post_init__(self) -> None:
        if not self.audits:
            raise ConfigError("--audits", "choose at least one of " + ", ".join(k.value for k in AuditKind))
        if not 0 < self.confidence < 1:
            raise ConfigError("--confidence", f"must be in (0, 1), got {self.confidence}")
        if self.canaries < 1:
            raise ConfigError("--canaries", f"must be at least 1, got {self.canaries}")
        if self.canary_norm < 1:
            raise ConfigError("--canary-norm", f"a canary's norm must be at least C (1.0), got {self.canary_norm}")
        if self.fault is not MechanismFault.NONE and AuditKind.ONE_RUN not in self.audits:
            raise ConfigError("--fault", "a mechanism fault is caught by the one-run audit: include one_run")
        if not 1 <= self.secret_digits <= 9:
            raise ConfigError("--secret-digits", f"must be 1..9, got {self.secret_digits}")
        if any(n < 1 for n in self.secret_insertions) or self.secrets_per_count < 1:
            raise ConfigError("--secret-insertions", "insertion counts and secrets per count must be >= 1")

    def wants(self, kind: AuditKind) -> bool:
        return kind in self.audits

    def as_dict(self) -> dict:
        """JSON-able, enums by value, sets sorted."""
        out = dataclasses.asdict(self)
        out["audits"] = sorted(k.value for k in self.audits)
        out["fault"], out["profile"] = self.fault.value, self.profile.value
        out["secret_insertions"] = list(self.secret_insertions)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> AuditSettings:
        """:meth:`as_dict`'s inverse (how a Flower run carries the settings to the server and the audited node)."""
        try:
            return cls(**{**raw, "audits": frozenset(AuditKind(k) for k in raw["audits"]),
                          "fault": MechanismFault(raw["fault"]), "profile": AuditProfile(raw["profile"]),
                          "secret_insertions": tuple(raw["secret_insertions"])})
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError("audit", f"not audit settings: {err}") from None


def parse_audits(text: str) -> frozenset[AuditKind]:
    """``one_run,membership`` -> the kinds; ``all`` -> every audit."""
    names = [part.strip().lower().replace("-", "_") for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return ALL_AUDITS
    known = {k.value: k for k in AuditKind}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError("--audits", f"unknown audit {unknown[0] if unknown else '(none)'}; choose from all, "
                                      + ", ".join(known))
    return frozenset(known[n] for n in names)


def audited_config(cfg: ExperimentConfig, settings: AuditSettings) -> ExperimentConfig:
    """The config an audit run trains: ``settings.profile`` applied and ``-audit`` added to the name, so an audit
    run (half of a client's data held out, canaries, secrets) is never mistaken for, or reused as, a plain run."""
    cfg = apply_profile(cfg, settings.profile)
    return dataclasses.replace(cfg, name=f"{cfg.name}-audit")


def apply_profile(cfg: ExperimentConfig, profile: AuditProfile) -> ExperimentConfig:
    """``overfit``: 64 training examples a client on average, 40 local steps of batch 16 a round, 3 rounds, every
    client each round — memorisation a membership attack can see without DP, in minutes on 2 CPU cores."""
    if profile is AuditProfile.AS_CONFIGURED:
        return cfg
    clients = cfg.partition.num_clients
    pool = 64 * clients
    data = dataclasses.replace(cfg.data, max_examples=round(pool / (1 - cfg.data.test_fraction)))
    training = dataclasses.replace(cfg.training, rounds=3, local_steps=40, batch_size=16)
    federation = dataclasses.replace(cfg.federation, client_fraction=1.0)
    return dataclasses.replace(cfg, name=f"{cfg.name}-overfit", data=data, training=training,
                               federation=federation)
