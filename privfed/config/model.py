"""The ``model:`` section: which network, which task, and which of the four regimes trains it."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from privfed.config.fields import check, described


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


@dataclass(frozen=True)
class ModelConfig:
    source: str = described("a built-in model (minilm | smollm2 | tiny_llama | tiny_bert), a local Hugging Face "
                            "folder, or a model name already in the local Hugging Face cache (never downloaded)",
                            default="minilm")
    task: TaskChoice = described("auto | causal_lm | classification (auto: a built-in model's own task, else "
                                 "classification exactly when the data has labels)", default=TaskChoice.AUTO)
    regime: Regime = described("pretrain | full | lora | prompt", default=Regime.LORA)
    lora_rank: int = described("LoRA rank r", default=8)
    lora_alpha: float = described("LoRA scaling alpha", default=16.0)
    lora_layers: tuple[int, ...] = described("transformer layers that get LoRA, by index (empty = all)", default=())
    lora_top_layers: int = described("LoRA on the top k transformer layers only, whatever the model's depth (0 = as "
                                     "model.lora_layers says; a model with at most k layers gets all)", default=0)
    lora_targets: tuple[str, ...] = described("module names that get LoRA (empty = peft's default for the "
                                              "architecture)", default=())
    lora_dropout: float = described("dropout on the LoRA path", default=0.0)
    lora_bias: LoraBias = described("none | all | lora_only: biases that train beside the adapters",
                                    default=LoraBias.NONE)
    lora_freeze_a: bool = described("FFA-LoRA (Sun et al., ICLR 2024): LoRA's A stays at its random initialisation "
                                    "and only B trains: half the adapter values under DP noise and on the wire, and "
                                    "FedAvg of B is exactly FedAvg of BA", default=False)
    prompt_tokens: int = described("virtual tokens in the soft prompt", default=16)
    prompt_init_text: str = described("initialise the soft prompt from this text's token embeddings (empty: random)",
                                      default="")
    init_weights: str = described("a .safetensors file of the whole network's weights, loaded before the regime "
                                  "applies (a network privfed trained whole, e.g. the attack grid's warm start; "
                                  "empty: the source's own weights)", default="")

    def __post_init__(self) -> None:
        """The section's own rules (rules across sections: :mod:`privfed.config.rules`)."""
        check(self.lora_rank >= 1, "model.lora_rank", "must be >= 1")
        check(self.lora_alpha > 0, "model.lora_alpha", "must be > 0")
        check(all(i >= 0 for i in self.lora_layers), "model.lora_layers", "layer indices must be >= 0")
        check(self.lora_top_layers >= 0, "model.lora_top_layers", "must be >= 0 (0 = as model.lora_layers says)")
        check(not (self.lora_top_layers and self.lora_layers), "model.lora_top_layers",
              "choose layers either by index (model.lora_layers) or from the top (model.lora_top_layers), not both")
        check(all(bool(t) for t in self.lora_targets), "model.lora_targets", "module names must be non-empty")
        check(0.0 <= self.lora_dropout < 1.0, "model.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        check(self.prompt_tokens >= 1, "model.prompt_tokens", "must be >= 1")
        check(not self.lora_freeze_a or self.regime is Regime.LORA, "model.lora_freeze_a",
              f"freezes LoRA's A matrices: it needs model.regime=lora, got {self.regime.value}")
        check(not self.prompt_init_text or self.regime is Regime.PROMPT, "model.prompt_init_text",
              "initialises the soft prompt: it needs model.regime=prompt")
