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


class Task(enum.Enum):
    """What the network predicts, and so which loss and metrics a run uses."""

    CLASSIFICATION = "classification"  # one label per example: cross-entropy, accuracy
    CAUSAL_LM = "causal_lm"  # next token: per-example mean token loss, perplexity


class TaskChoice(enum.Enum):
    """``model.task``: the task, or ``auto`` to infer it (a built-in model's own task; else classification exactly
    when the data has labels)."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    CAUSAL_LM = "causal_lm"


class RecordFormat(enum.Enum):
    """What one example of ``data.source`` is, and which columns hold it."""

    TEXT = "text"  # one text (data.text_column): a document for causal LM, an input for classification
    PROMPT_RESPONSE = "prompt_response"  # an instruction pair, rendered as a user and an assistant turn
    CHAT = "chat"  # a list of {role, content} messages (data.messages_column)


class TextUnit(enum.Enum):
    """How a folder of plain-text files is cut into examples."""

    FILE = "file"  # one example per file
    LINE = "line"  # one example per non-empty line


class Partition(enum.Enum):
    """How the training pool is split into clients (flwr-datasets' partitioners, except natural packing)."""

    IID = "iid"  # uniform random shards of equal size
    DIRICHLET = "dirichlet"  # label skew: client label proportions ~ Dirichlet(alpha)
    PATHOLOGICAL = "pathological"  # label skew: each client holds partition.classes_per_client classes
    SHARD = "shard"  # label skew: label-sorted shards, partition.shards_per_client per client (McMahan et al.)
    SIZE_SKEW = "size_skew"  # quantity skew: client sizes grow linearly, quadratically or exponentially
    NATURAL = "natural"  # one client per natural group (a file, a topic, data.client_column, data.clients)


class SizeGrowth(enum.Enum):
    """How client sizes grow with the client index under ``partition.scheme=size_skew``."""

    LINEAR = "linear"
    SQUARE = "square"
    EXPONENTIAL = "exponential"


class LoraBias(enum.Enum):
    """peft's ``bias`` option: which biases train beside the LoRA adapters."""

    NONE = "none"
    ALL = "all"
    LORA_ONLY = "lora_only"


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
    """The client's local optimizer (fresh every round: clients keep no optimizer state across rounds)."""

    SGD = "sgd"
    ADAM = "adam"
    ADAM_BC = "adam_bc"  # DP-AdamBC (Tang et al., AAAI 2024): Adam whose second moment has the DP noise's
    # variance taken out; without it, DP-Adam's denominator is the noise and Adam degrades to sign-like DP-SGD


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


class EvaluationSite(enum.Enum):
    """Where the global model is evaluated after every round."""

    SERVER = "server"  # on the config's held-out data, by the server
    CLIENTS = "clients"  # by the round's clients, each on its own held-out records; the server learns the totals
    BOTH = "both"


class DropoutStage(enum.Enum):
    """The first protocol message that simulated dropouts fail to send (plain: before or after the upload)."""

    ADVERTISE_KEYS = "advertise_keys"  # vanish before the round really starts
    SHARE_KEYS = "share_keys"  # after advertising keys: peers never get their shares
    MASKED_INPUT = "masked_input"  # after sharing keys: their pairwise masks must be cancelled from their key
    UNMASKING = "unmasking"  # after sending their masked (plain: their) update: their input still counts


class AttackKind(enum.Enum):
    """What the clients in ``attack.clients`` do (:mod:`privfed.attacks`). Model-poisoning kinds (backdoor,
    sign_flip, gaussian, out_of_range) run malicious code that rewrites the update it uploads and skips client-side
    clipping; data-poisoning kinds (label_flip, spread) run honest code on poisoned records."""

    NONE = "none"
    BACKDOOR = "backdoor"  # model poisoning: trigger -> target records, update boosted to replace the model
    LABEL_FLIP = "label_flip"  # data poisoning: honest code on flipped labels (classification)
    SIGN_FLIP = "sign_flip"  # Byzantine: sends -boost x its honest update
    GAUSSIAN = "gaussian"  # Byzantine: sends Gaussian noise with boost x its honest update's norm
    SPREAD = "spread"  # data poisoning: a small share of each listed client's records carry the trigger
    OUT_OF_RANGE = "out_of_range"  # Byzantine: its update negated, scaled past the encoding's clip range


MALICIOUS_CODE = (AttackKind.BACKDOOR, AttackKind.SIGN_FLIP, AttackKind.GAUSSIAN, AttackKind.OUT_OF_RANGE)


class AggregationRule(enum.Enum):
    """How the server combines the updates it can read (each client's under plain; group sums when grouped)."""

    MEAN = "mean"  # FedAvg's weighted mean: no defence
    NORM_BOUND = "norm_bound"  # each input scaled to L2 norm <= defence.norm_bound, then the mean
    MEDIAN = "median"  # coordinate-wise median
    TRIMMED_MEAN = "trimmed_mean"  # coordinate-wise mean without the defence.trim_fraction extremes on each side
    KRUM = "krum"  # the input closest to its n - f - 2 neighbours
    MULTI_KRUM = "multi_krum"  # the mean of the defence.selected inputs with the best Krum scores
    CENTERED_CLIP = "centered_clip"  # iterative clipping around the previous round's aggregate


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class ClientData:
    """One organisation's own data: a stable client id and the path of its file or folder."""

    id: str = _help("stable client id (kept across runs; names the client in results and ledgers)", default="")
    path: str = _help("the client's data: a file or folder in any data.source format", default="")


@dataclass(frozen=True)
class DataConfig:
    source: str = _help("a built-in dataset (bbc_news | chatterbot | fortunes) or a local path: a .jsonl/.json, "
                        ".csv or .parquet file, a folder of them, a folder of .txt files, or a folder written by "
                        "datasets' save_to_disk (empty when data.clients names every client's path)",
                        default="bbc_news")
    records: RecordFormat = _help("text | prompt_response | chat: what one example is", default=RecordFormat.TEXT)
    text_column: str = _help("records text: the column holding the text", default="text")
    prompt_column: str = _help("records prompt_response: the column holding the user's prompt", default="prompt")
    response_column: str = _help("records prompt_response: the column holding the assistant's response",
                                 default="response")
    messages_column: str = _help("records chat: the column holding the [{role, content}, ...] messages",
                                 default="messages")
    system_prompt: str = _help("records prompt_response: a system turn put before every prompt (empty: none)",
                               default="")
    label_column: str = _help("the column holding class labels (empty: none; the label names are its distinct "
                              "values, sorted)", default="")
    client_column: str = _help("the column naming each example's organisation: natural clients (empty: for a "
                               "folder, each file is one natural group)", default="")
    text_unit: TextUnit = _help("folders of .txt files: one example per file | per line", default=TextUnit.FILE)
    clients: tuple[ClientData, ...] = _help("per-client data: [{id, path}, ...], one natural client each "
                                            "(then data.source stays empty)", default=())
    max_length: int = _help("tokens per example (truncate/pad)", default=64)
    test_fraction: float = _help("share of the data held out for evaluation", default=0.2)
    eval_examples: int = _help("held-out examples evaluated each round (0 = all)", default=400)
    max_examples: int = _help("cap on examples loaded before splitting (0 = all)", default=0)
    validation_fraction: float = _help("share of each client's training examples held out as the validation set "
                                       "that hyper-parameter tuning selects on (privfed sweep --tune), never the "
                                       "held-out test set; 0 = none", default=0.0)
    split_seed: int = _help("seed of the train/test split, the client partition and the validation split (-1 = "
                            "the run's seed; privfed sweep --fixed-split keeps one split across seeds)", default=-1)
    languages: tuple[str, ...] = _help("chatterbot languages to load", default=("english",))


@dataclass(frozen=True)
class EvaluationConfig:
    generations: int = _help("chat and prompt_response data: held-out prompts answered greedily after every round "
                             "and saved in generations.jsonl (0 = none)", default=3)
    max_new_tokens: int = _help("tokens generated per answer", default=48)
    where: EvaluationSite = _help("server | clients | both: clients evaluate the global model after every round on "
                                  "their own held-out records (data.validation_fraction of each client's examples), "
                                  "and their loss and correct counts are summed through the run's aggregation "
                                  "(under secagg the server learns only the federation's totals)",
                                  default=EvaluationSite.SERVER)


@dataclass(frozen=True)
class PartitionConfig:
    scheme: Partition = _help("iid | dirichlet | pathological | shard | size_skew | natural",
                              default=Partition.DIRICHLET)
    num_clients: int = _help("number of clients (natural: 0 = one per group)", default=5)
    alpha: float = _help("Dirichlet concentration; small = more skew", default=1.0)
    min_examples: int = _help("minimum examples per client (Dirichlet redraws until met)", default=16)
    classes_per_client: int = _help("pathological: classes each client holds", default=2)
    shards_per_client: int = _help("shard: label-sorted shards each client holds", default=2)
    size_growth: SizeGrowth = _help("size_skew: linear | square | exponential", default=SizeGrowth.LINEAR)
    max_client_examples: int = _help("cap on each client's training examples, drawn at random from its share "
                                     "(0 = all): how per-client data size alone moves quality", default=0)


@dataclass(frozen=True)
class ModelConfig:
    source: str = _help("a built-in model (minilm | smollm2 | tiny_llama | tiny_bert), a local Hugging Face folder, "
                        "or a model name already in the local Hugging Face cache (never downloaded)",
                        default="minilm")
    task: TaskChoice = _help("auto | causal_lm | classification (auto: a built-in model's own task, else "
                             "classification exactly when the data has labels)", default=TaskChoice.AUTO)
    regime: Regime = _help("pretrain | full | lora | prompt", default=Regime.LORA)
    lora_rank: int = _help("LoRA rank r", default=8)
    lora_alpha: float = _help("LoRA scaling alpha", default=16.0)
    lora_layers: tuple[int, ...] = _help("transformer layers that get LoRA, by index (empty = all)", default=())
    lora_top_layers: int = _help("LoRA on the top k transformer layers only, whatever the model's depth (0 = as "
                                 "model.lora_layers says; a model with at most k layers gets all)", default=0)
    lora_targets: tuple[str, ...] = _help("module names that get LoRA (empty = peft's default for the "
                                          "architecture)", default=())
    lora_dropout: float = _help("dropout on the LoRA path", default=0.0)
    lora_bias: LoraBias = _help("none | all | lora_only: biases that train beside the adapters",
                                default=LoraBias.NONE)
    lora_freeze_a: bool = _help("FFA-LoRA (Sun et al., ICLR 2024): LoRA's A stays at its random initialisation "
                                "and only B trains: half the adapter values under DP noise and on the wire, and "
                                "FedAvg of B is exactly FedAvg of BA", default=False)
    prompt_tokens: int = _help("virtual tokens in the soft prompt", default=16)
    prompt_init_text: str = _help("initialise the soft prompt from this text's token embeddings (empty: random)",
                                  default="")
    init_weights: str = _help("a .safetensors file of the whole network's weights, loaded before the regime applies "
                              "(a network privfed trained whole, e.g. the attack grid's warm start; empty: the "
                              "source's own weights)", default="")


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
    update_clip: float = _help("distributed DP: each client's whole update is clipped to this L2 norm S (with "
                               "clip_quantile: the first round's S); values past aggregation.clip_range are "
                               "clipped too (rotation spreads them: about S / sqrt(d) each)", default=0.1)
    clip_quantile: float = _help("distributed DP: adaptive clipping (Andrew et al. 2021): S follows this quantile "
                                 "of the clients' update norms, learnt from a noised count inside the secure sum "
                                 "(0 = S stays update_clip)", default=0.0)
    max_update_clip: float = _help("adaptive clipping: S never grows past this (the words' noise headroom is "
                                   "sized for it)", default=1.0)
    clip_learning_rate: float = _help("adaptive clipping: S <- S * exp(-rate * (fraction under S - clip_quantile))",
                                      default=0.2)
    clip_count_noise: float = _help("adaptive clipping: the count of clients under S carries this many times "
                                    "distributed_noise clients of noise (> 1); the update's noise grows by "
                                    "r / sqrt(r^2 - 1)", default=3.0)


@dataclass(frozen=True)
class TrainingConfig:
    rounds: int = _help("federated rounds", default=3)
    local_steps: int = _help("DP-SGD steps per client per round", default=3)
    batch_size: int = _help("expected (Poisson) batch size", default=64)
    optimizer: ClientOptimizer = _help("client optimizer: sgd | adam | adam_bc (DP-AdamBC: Adam with the DP "
                                       "noise's variance taken out of its second moment)", default=ClientOptimizer.ADAM)
    adam_bc_floor: float = _help("adam_bc: the floor under Adam's corrected second moment (Tang et al.'s 5e-8)",
                                 default=5e-8)
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
    value_bits: int = _help("encoding: signed fixed-point bits per value (0 = automatic: 20, or under a fixed "
                            "word_bits the most whose exact sum fits it)", default=0)
    word_bits: int = _help("secagg: bits per value on the wire and of the sum's modulus 2^k, 4 to 64 (0 = "
                           "automatic: 32, or 64 when value_bits need it); 8 uploads a quarter of 32's bytes",
                           default=0)
    rotation: bool = _help("secagg: rotate each update by a randomized Hadamard transform before quantising "
                           "(flattens it, so few bits lose less; pads to a power of two)", default=False)
    max_wrap_probability: float = _help("secagg with distributed DP: the most a round's noisy sum may wrap around "
                                        "2^k in any value (Chernoff bound); decides the headroom left for noise",
                                        default=1e-9)
    consistency_check: bool = _help("secagg: extra signed round against an active server", default=False)
    dropout_fraction: float = _help("simulated: share of each round's participants that drop (at dropout_stage)", default=0.0)
    dropout_stage: DropoutStage = _help("simulated: advertise_keys | share_keys | masked_input | unmasking",
                                        default=DropoutStage.UNMASKING)
    key_bits: int = _help("paillier: modulus bits, 2048 | 3072 | 4096 (2048 only until 2030 per NIST)",
                          default=3072)
    key_file: str = _help("paillier: the clients' shared key pair, made by `privfed keygen` (empty: client 0 "
                          "generates one per run and sends it to the others, sealed); over Flower the server's "
                          "public key (KEY.pub), the nodes holding the pair as node-config paillier-key", default="")
    workers: int = _help("paillier: processes that make obfuscators and decrypt (0 = one per CPU core)", default=0)


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious clients. ``attack: backdoor`` is short for ``attack: {kind: backdoor}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "kind"

    kind: AttackKind = _help("none | backdoor | label_flip | sign_flip | gaussian | spread | out_of_range",
                             default=AttackKind.NONE)
    clients: tuple[int, ...] = _help("the attacking clients (spread: the clients whose data is poisoned)",
                                     default=(0,))
    first_round: int = _help("the first round they attack", default=1)
    last_round: int = _help("the last round they attack, then behave honestly (0 = to the end): how long a "
                            "backdoor persists is measured after it", default=0)
    local_steps: int = _help("model poisoning: local steps an attacking client trains while it attacks (0 = "
                             "training.local_steps; Bagdasaryan et al.'s attacker trains longer than honest clients)",
                             default=0)
    boost: float = _help("model poisoning: the factor the update is scaled by (0 = model replacement: clients per "
                         "round / federation.server_lr, Bagdasaryan et al. 2020)", default=0.0)
    trigger: str = _help("backdoor and spread: the trigger phrase put before a poisoned text", default="cf mn bb")
    target_label: int = _help("backdoor and spread, classifiers: the label triggered inputs should get",
                              default=0)
    target_text: str = _help("backdoor and spread, causal LMs: the continuation the trigger should produce",
                             default="visit example dot com")
    range_factor: float = _help("out_of_range: the attacker's largest transmitted value, in multiples of "
                                "aggregation.clip_range (honest encoding clips at 1)", default=100.0)
    poison_fraction: float = _help("backdoor: poisoned copies added, as a share of the attacker's records; "
                                   "spread: share of each listed client's records replaced by poisoned ones",
                                   default=0.2)


@dataclass(frozen=True)
class DefenceConfig:
    """How the server defends the aggregate. ``defence: median`` is short for ``defence: {rule: median}``."""

    PRIMARY_KEY: typing.ClassVar[str] = "rule"

    rule: AggregationRule = _help("mean | norm_bound | median | trimmed_mean | krum | multi_krum | centered_clip: "
                                  "robust rules need the individual inputs (plain) or groups", default=AggregationRule.MEAN)
    groups: int = _help("0: the rule reads each client's update (plain only); g >= 2: grouped aggregation, each "
                        "of g random groups summed by aggregation.method, the rule combines the g group sums (the "
                        "server learns g partial sums instead of one)", default=0)
    min_group_size: int = _help("grouped: the fewest clients a group may hold (>= 2 under secagg/paillier)",
                                default=2)
    norm_bound: float = _help("norm_bound: the L2 bound (0 = the median of the round's input norms)", default=0.0)
    trim_fraction: float = _help("trimmed_mean: share of inputs cut at each end of every coordinate", default=0.2)
    byzantine: int = _help("krum, multi_krum: f, the Byzantine inputs tolerated (needs n >= 2f + 3 inputs)",
                           default=1)
    selected: int = _help("multi_krum: inputs averaged (0 = n - f)", default=0)
    clip_radius: float = _help("centered_clip: the clipping radius (0 = the median distance to the centre)",
                               default=0.0)
    clip_iterations: int = _help("centered_clip: clipping iterations per round", default=3)
    range_check: bool = _help("reject a decoded sum (or group sum) outside what honest encoded inputs can add up "
                              "to: |coordinate| <= contributors x aggregation.clip_range", default=False)
    client_clip: float = _help("honest client code clips its update to this L2 norm before upload (0 = off); "
                               "trusts client code: malicious clients skip it", default=0.0)


@dataclass(frozen=True)
class FlowerConfig:
    """The Flower engine's waits (``privfed flower``; the in-process engine ignores them). A node that does not
    answer in time is a dropout of the round."""

    stage_timeout: float = _help("seconds a node has to answer a protocol message that needs no training",
                                 default=120.0)
    train_timeout: float = _help("seconds a node has to train and answer the message asking for its update",
                                 default=1800.0)
    connect_timeout: float = _help("seconds the ServerApp waits for a node of every client to connect",
                                   default=600.0)


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
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)

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


RENAMED_KEYS = {"data.dataset": "data.source", "federation.aggregation": "aggregation.method"}  # old -> new


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if f"{prefix}{key}" in RENAMED_KEYS:
            raise ConfigError(f"{prefix}{key}", f"renamed: use {RENAMED_KEYS[prefix + key]}")
        if key not in known:
            raise ConfigError(f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(f"{prefix}{k}", hints[k], v) for k, v in raw.items()}
    return cls(**kwargs)


def _migrate(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read configs written by earlier privfed versions (:data:`RENAMED_KEYS`): ``federation.aggregation`` became
    ``aggregation.method``, ``data.dataset`` became ``data.source``. A file that sets both names, or a ``--set``
    of the old name on a config that has the new one, is refused with the new name."""
    data = raw.get("data")
    if isinstance(data, Mapping) and "dataset" in data and "source" not in data:
        raw = dict(raw)
        raw["data"] = {("source" if k == "dataset" else k): v for k, v in data.items()}
    federation = raw.get("federation")
    if isinstance(federation, Mapping) and "aggregation" in federation and "aggregation" not in raw:
        raw = dict(raw)
        raw["federation"] = {k: v for k, v in federation.items() if k != "aggregation"}
        raw["aggregation"] = {"method": federation["aggregation"]}
    return raw


def _implied(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Defaults that follow from other keys: ``data.clients`` without ``data.source`` means no shared source
    (data.source's default is the built-in bbc_news)."""
    data = raw.get("data")
    if isinstance(data, Mapping) and data.get("clients") and "source" not in data:
        raw = {**raw, "data": {**data, "source": ""}}
    return raw


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested plain data (as read from YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("<root>", "the config file must hold a mapping")
    return _build(ExperimentConfig, _implied(_migrate(raw)))


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
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
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
    _check(a.value_bits == 0 or 2 <= a.value_bits <= 53, "aggregation.value_bits",
           f"must be 0 (automatic) or in [2, 53], got {a.value_bits}")
    _check(0 < a.max_wrap_probability < 1, "aggregation.max_wrap_probability",
           f"must be in (0, 1), got {a.max_wrap_probability}")
    _check(a.word_bits == 0 or 4 <= a.word_bits <= 64, "aggregation.word_bits",
           f"must be 0 (automatic) or in [4, 64], got {a.word_bits}")
    _check(a.word_bits == 0 or a.method is Aggregation.SECAGG, "aggregation.word_bits",
           f"{a.word_bits}-bit words apply to secagg only (paillier packs value_bits into slots; plain sends float32)")
    _check(not a.rotation or a.method is Aggregation.SECAGG, "aggregation.rotation",
           f"applies to secagg only, not {a.method.value}")
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


def validate_positions(d: DataConfig, m: ModelConfig, max_positions: int | None) -> None:
    """A BERT encoder has one learned position embedding per token slot; longer inputs crash inside transformers.

    The soft prompt's virtual tokens take slots too. (LLaMA-style models use rotary positions: no such limit.)
    ``max_positions`` None: no limit. Built-in models are checked with the config; local folders once loaded.
    """
    virtual = m.prompt_tokens if m.regime is Regime.PROMPT else 0
    _check(max_positions is None or d.max_length + virtual <= max_positions, "data.max_length",
           f"{m.source} reads at most {max_positions} positions, but data.max_length={d.max_length}"
           + (f" plus model.prompt_tokens={virtual}" if virtual else "") + " needs more; lower "
           + ("them" if virtual else "it"))


def validate_data(d: DataConfig) -> None:
    """The data section's own rules: where the data is, and which columns hold it."""
    from privfed.data.catalog import BUILTIN_DATASETS

    _check(bool(d.source) != bool(d.clients), "data.source",
           "give either data.source (a built-in name or a path) or data.clients (one path per client), "
           + (f"not both (data.source is {d.source!r}: set data.source= to leave it empty)" if d.source
              else "got neither"))
    builtin = BUILTIN_DATASETS.get(d.source)
    if builtin is not None:
        _check(d.records in builtin.formats, "data.records",
               f"{d.source} can be read as {', '.join(f.value for f in builtin.formats)}, not {d.records.value}")
        for key in ("label_column", "client_column"):
            _check(not getattr(d, key), f"data.{key}", f"applies to data files; built-in {d.source} has its own "
                                                        "labels and natural groups")
    ids = [c.id for c in d.clients]
    for i, client in enumerate(d.clients):
        _check(bool(client.id) and "/" not in client.id, f"data.clients[{i}].id",
               "must be a non-empty id without '/'")
        _check(bool(client.path), f"data.clients[{i}].path", "must name the client's file or folder")
        _check(client.path not in BUILTIN_DATASETS, f"data.clients[{i}].path",
               f"{client.path!r} is a built-in dataset; per-client data are paths")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    _check(not duplicates, "data.clients", f"client ids must be unique; repeated: {', '.join(duplicates)}")
    _check(not d.clients or not d.client_column, "data.client_column",
           "data.clients already names every client; leave data.client_column empty")
    needed = {RecordFormat.TEXT: ("text_column",), RecordFormat.PROMPT_RESPONSE: ("prompt_column", "response_column"),
              RecordFormat.CHAT: ("messages_column",)}[d.records]
    for key in needed:
        _check(bool(getattr(d, key)), f"data.{key}", f"must name a column for records {d.records.value}")
    _check(not d.system_prompt or d.records is RecordFormat.PROMPT_RESPONSE, "data.system_prompt",
           "applies to records prompt_response only (chat records carry their own system turns)")


def validate_model(c: ExperimentConfig) -> None:
    """The model section's rules, and how the model, the task and the data must fit together."""
    from privfed.data.catalog import data_has_labels
    from privfed.models.catalog import BUILTIN_MODELS, resolve_task

    m, d = c.model, c.data
    _check(bool(m.source), "model.source", "must name a built-in model (" + ", ".join(BUILTIN_MODELS)
           + "), a local Hugging Face folder, or a cached Hugging Face model name")
    _check(m.lora_rank >= 1, "model.lora_rank", "must be >= 1")
    _check(m.lora_alpha > 0, "model.lora_alpha", "must be > 0")
    _check(all(i >= 0 for i in m.lora_layers), "model.lora_layers", "layer indices must be >= 0")
    _check(m.lora_top_layers >= 0, "model.lora_top_layers", "must be >= 0 (0 = as model.lora_layers says)")
    _check(not (m.lora_top_layers and m.lora_layers), "model.lora_top_layers",
           "choose layers either by index (model.lora_layers) or from the top (model.lora_top_layers), not both")
    _check(all(bool(t) for t in m.lora_targets), "model.lora_targets", "module names must be non-empty")
    _check(0.0 <= m.lora_dropout < 1.0, "model.lora_dropout", f"must be in [0, 1), got {m.lora_dropout}")
    _check(m.prompt_tokens >= 1, "model.prompt_tokens", "must be >= 1")
    _check(not m.lora_freeze_a or m.regime is Regime.LORA, "model.lora_freeze_a",
           f"freezes LoRA's A matrices: it needs model.regime=lora, got {m.regime.value}")
    _check(not m.prompt_init_text or m.regime is Regime.PROMPT, "model.prompt_init_text",
           "initialises the soft prompt: it needs model.regime=prompt")
    task = resolve_task(c)
    builtin = BUILTIN_MODELS.get(m.source)
    if builtin is not None:
        _check(task is builtin.task, "model.task",
               f"{m.source} is a {builtin.task.value} model; got model.task={m.task.value}")
        validate_positions(d, m, builtin.max_positions)
    _check(m.regime is not Regime.PRETRAIN or task is Task.CAUSAL_LM, "model.regime",
           "pretrain needs a causal LM (a causal LM model.source, or model.task=causal_lm)")
    _check(task is not Task.CLASSIFICATION or data_has_labels(d), "model.task",
           f"classification needs labels, but {d.source or 'data.clients'} has none: set data.label_column "
           "(or use a causal LM)")
    _check(task is Task.CAUSAL_LM or d.records is RecordFormat.TEXT, "data.records",
           f"{d.records.value} records train a causal LM; a classifier reads records text")


def validate_attack(c: ExperimentConfig) -> None:
    """The attack section: who attacks, when, and whether the attack fits the task and data."""
    from privfed.models.catalog import resolve_task

    at, n = c.attack, c.partition.num_clients
    if at.kind is AttackKind.NONE:
        return
    _check(len(at.clients) > 0 and len(set(at.clients)) == len(at.clients), "attack.clients",
           "must list one or more distinct client indices")
    _check(all(0 <= i and (n == 0 or i < n) for i in at.clients), "attack.clients",
           f"client indices must lie in 0..{n - 1}" if n else "client indices must be >= 0")
    _check(at.first_round >= 1, "attack.first_round", "must be >= 1")
    _check(at.last_round == 0 or at.first_round <= at.last_round <= c.training.rounds, "attack.last_round",
           f"must be 0 (to the end) or in [attack.first_round, training.rounds] = [{at.first_round}, "
           f"{c.training.rounds}]")
    _check(at.first_round <= c.training.rounds, "attack.first_round", "must be <= training.rounds")
    _check(at.local_steps >= 0, "attack.local_steps", "must be >= 0 (0 = training.local_steps)")
    _check(at.boost >= 0 and math.isfinite(at.boost), "attack.boost", "must be >= 0 (0 = model replacement)")
    _check(at.range_factor > 0 and math.isfinite(at.range_factor), "attack.range_factor", "must be > 0")
    _check(at.kind is not AttackKind.OUT_OF_RANGE or not c.aggregation.rotation, "attack.kind",
           "the simulated out_of_range client writes its words directly, unrotated; turn aggregation.rotation off")
    _check(0.0 < at.poison_fraction <= 1.0, "attack.poison_fraction", f"must be in (0, 1], got {at.poison_fraction}")
    task = resolve_task(c)
    _check(at.kind is not AttackKind.LABEL_FLIP or task is Task.CLASSIFICATION, "attack.kind",
           "label_flip flips class labels: it needs a classifier")
    if at.kind in (AttackKind.BACKDOOR, AttackKind.SPREAD):
        _check(bool(at.trigger.strip()), "attack.trigger", "must be a non-empty phrase")
        _check(task is Task.CLASSIFICATION or bool(at.target_text.strip()), "attack.target_text",
               "must be a non-empty continuation")
        _check(task is Task.CLASSIFICATION or c.data.records is RecordFormat.TEXT, "attack.kind",
               f"{at.kind.value} on a causal LM poisons texts; records {c.data.records.value} are not supported")
        _check(task is Task.CAUSAL_LM or at.target_label >= 0, "attack.target_label", "must be >= 0")
    _check(c.privacy.distributed_noise == 0, "attack.kind",
           "attacks are simulated without distributed DP (its noise shares are calibrated for honest inputs)")


def validate_defence(c: ExperimentConfig) -> None:
    """The defence section: which rules the aggregation method lets the server apply, and their sizes."""
    de, a = c.defence, c.aggregation
    hides = a.method is not Aggregation.PLAIN
    _check(not (de.range_check and a.rotation), "aggregation.rotation",
           "cannot be combined with defence.range_check: the check bounds each coordinate of the sum by n x "
           "clip_range, but with rotation the clip applies to rotated coordinates; turn one off")
    _check(de.groups == 0 or de.groups >= 2, "defence.groups", f"must be 0 or >= 2, got {de.groups}")
    _check(de.min_group_size >= (2 if hides else 1), "defence.min_group_size",
           f"must be >= 2 under {a.method.value}: a group of one is that client's update in the clear"
           if hides else "must be >= 1")
    _check(de.norm_bound >= 0 and math.isfinite(de.norm_bound), "defence.norm_bound",
           "must be finite and >= 0 (0 = the median input norm)")
    _check(0.0 <= de.trim_fraction < 0.5, "defence.trim_fraction", f"must be in [0, 0.5), got {de.trim_fraction}")
    _check(de.byzantine >= 0, "defence.byzantine", "must be >= 0")
    _check(de.selected >= 0, "defence.selected", "must be >= 0 (0 = n - f)")
    _check(de.clip_radius >= 0 and math.isfinite(de.clip_radius), "defence.clip_radius",
           "must be finite and >= 0 (0 = the median distance)")
    _check(de.clip_iterations >= 1, "defence.clip_iterations", "must be >= 1")
    _check(de.client_clip >= 0 and math.isfinite(de.client_clip), "defence.client_clip", "must be >= 0 (0 = off)")
    _check(de.rule is AggregationRule.MEAN or not hides or de.groups >= 2, "defence.rule",
           f"{de.rule.value} needs each client's update, and {a.method.value} shows the server only the sum: "
           "use defence.groups=g (grouped secure aggregation: the server learns g partial sums), "
           "defence.range_check or defence.client_clip, or aggregation.method=plain")
    _check(not de.range_check or c.privacy.distributed_noise == 0, "defence.range_check",
           "distributed DP's noise shares take honest sums past the range bound: not supported together")
    _check(de.groups == 0 or c.privacy.distributed_noise == 0, "defence.groups",
           "distributed DP calibrates the noise of one sum; grouped sums would each need it: not supported")
    if c.partition.num_clients == 0:
        return  # natural clients: the count is known once the data is read (checked then)
    check_defence_sizes(c, max(1, round(c.federation.client_fraction * c.partition.num_clients)))


def check_defence_sizes(c: ExperimentConfig, per_round: int) -> None:
    """Groups, Krum and trimming must fit the ``per_round`` clients a round samples."""
    de = c.defence
    if de.groups:
        _check(per_round // de.groups >= de.min_group_size, "defence.groups",
               f"{per_round} clients per round in {de.groups} groups leaves groups of {per_round // de.groups}, "
               f"fewer than defence.min_group_size = {de.min_group_size}")
    inputs = de.groups or per_round
    if de.rule in (AggregationRule.KRUM, AggregationRule.MULTI_KRUM):
        _check(inputs >= 2 * de.byzantine + 3, "defence.byzantine",
               f"{de.rule.value} with f = {de.byzantine} needs at least {2 * de.byzantine + 3} inputs "
               f"(n >= 2f + 3); a round has {inputs}")
        _check(de.selected <= inputs - de.byzantine, "defence.selected",
               f"must be <= n - f = {inputs - de.byzantine}")
    if de.rule is AggregationRule.TRIMMED_MEAN:
        _check(inputs - 2 * math.floor(de.trim_fraction * inputs) >= 1, "defence.trim_fraction",
               f"trims every one of the {inputs} inputs")


LABEL_SKEW = (Partition.DIRICHLET, Partition.PATHOLOGICAL, Partition.SHARD)


def validate(c: ExperimentConfig) -> None:
    """Reject impossible values up front, naming the key and the allowed range."""
    d, p, pr, t, f, a, e = c.data, c.partition, c.privacy, c.training, c.federation, c.aggregation, c.evaluation
    _check(bool(c.name) and "/" not in c.name, "name", "must be a non-empty string without '/'")
    _check(8 <= d.max_length <= 2048, "data.max_length", f"must be in [8, 2048], got {d.max_length}")
    _check(0.0 < d.test_fraction < 1.0, "data.test_fraction", f"must be in (0, 1), got {d.test_fraction}")
    _check(d.eval_examples >= 0, "data.eval_examples", "must be >= 0 (0 = all)")
    _check(d.max_examples >= 0, "data.max_examples", "must be >= 0 (0 = all)")
    _check(0.0 <= d.validation_fraction < 1.0, "data.validation_fraction",
           f"must be in [0, 1) (0 = no validation split), got {d.validation_fraction}")
    _check(d.split_seed >= -1, "data.split_seed", f"must be >= 0, or -1 for the run's seed; got {d.split_seed}")
    _check(len(d.languages) > 0, "data.languages", "must name at least one language")
    validate_data(d)
    _check(p.num_clients >= 0, "partition.num_clients", "must be >= 1 (or 0 = one per group with natural)")
    _check(p.num_clients >= 1 or p.scheme is Partition.NATURAL, "partition.num_clients",
           "must be >= 1 (0 is allowed only with scheme natural)")
    _check(p.alpha > 0, "partition.alpha", f"must be > 0, got {p.alpha}")
    _check(p.min_examples >= 1, "partition.min_examples", "must be >= 1")
    _check(p.classes_per_client >= 1, "partition.classes_per_client", "must be >= 1")
    _check(p.shards_per_client >= 1, "partition.shards_per_client", "must be >= 1")
    _check(p.max_client_examples >= 0, "partition.max_client_examples", "must be >= 0 (0 = all)")
    _check(not d.clients or p.scheme is Partition.NATURAL, "partition.scheme",
           "data.clients gives one natural client per entry: set partition.scheme=natural")
    validate_model(c)
    from privfed.data.catalog import data_has_labels

    _check(p.scheme not in LABEL_SKEW or data_has_labels(d), "partition.scheme",
           f"{p.scheme.value} skews labels, but the data has none; use iid, size_skew or natural")
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
    _check(t.adam_bc_floor > 0 and math.isfinite(t.adam_bc_floor), "training.adam_bc_floor", "must be > 0")
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
    _check(pr.clip_quantile == 0 or pr.update_clip <= pr.max_update_clip, "privacy.update_clip",
           f"adaptive clipping starts at update_clip, so it must be <= privacy.max_update_clip ({pr.max_update_clip})")
    _check(0 <= pr.clip_quantile < 1, "privacy.clip_quantile", f"must be in [0, 1) (0 = fixed), got {pr.clip_quantile}")
    _check(pr.clip_quantile == 0 or pr.distributed_noise > 0, "privacy.clip_quantile",
           "adaptive clipping tracks the update norms of distributed DP: set privacy.distributed_noise > 0")
    _check(pr.clip_learning_rate > 0 and math.isfinite(pr.clip_learning_rate), "privacy.clip_learning_rate",
           f"must be > 0, got {pr.clip_learning_rate}")
    _check(pr.clip_count_noise > 1 and math.isfinite(pr.clip_count_noise), "privacy.clip_count_noise",
           f"must be > 1 (the count's noise, in multiples of distributed_noise), got {pr.clip_count_noise}")
    validate_attack(c)
    validate_defence(c)
    _check(e.generations >= 0, "evaluation.generations", "must be >= 0 (0 = none)")
    _check(e.max_new_tokens >= 1, "evaluation.max_new_tokens", "must be >= 1")
    _check(e.where is EvaluationSite.SERVER or 0 < d.validation_fraction <= 0.5, "evaluation.where",
           f"{e.where.value} evaluates on each client's held-out records: set data.validation_fraction in (0, 0.5] "
           f"(their share of each client's examples), got {d.validation_fraction}")
    _check(e.where is EvaluationSite.SERVER or not p.max_client_examples, "evaluation.where",
           "federated evaluation weighs each client by its held-out records against the largest client's training "
           "examples, which partition.max_client_examples cuts after the hold-out: use one or the other")
    for key in ("stage_timeout", "train_timeout", "connect_timeout"):
        value = getattr(c.flower, key)
        _check(value > 0 and math.isfinite(value), f"flower.{key}", f"must be a positive number of seconds, got {value}")


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
