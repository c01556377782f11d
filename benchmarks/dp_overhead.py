"""DP-SGD step time / non-private step time on the same model and batch, in one run.

For each (model, regime): the same batch goes through (a) a plain PyTorch forward/backward/Adam step, (b) DP-SGD
with materialised per-sample gradients (Opacus hooks) and (c) DP-SGD with ghost clipping (per-sample norms without
per-sample gradients, two backward passes). Reports the median of several timed steps after warm-up, the ratios
DP / plain, and last one JSON line.

    python benchmarks/dp_overhead.py [--seq-len 128] [--batch 8] [--steps 5]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import torch
from torch.utils.data import TensorDataset

from privfed.config import Accountant, Clipping, ModelConfig, Regime, Task
from privfed.data.tokenize import ExplicitInputs, as_batch
from privfed.models.inputs import explicit_inputs
from privfed.models.losses import per_example_loss
from privfed.models.regimes import apply_regime, trainable_parameters
from privfed.models.sources import load_model
from privfed.privacy.dpsgd import DpSettings, DpSgdRound, PlainRound, wrap_for_dp

CASES = [("minilm", Regime.LORA), ("minilm", Regime.PROMPT), ("minilm", Regime.FULL),
         ("tiny_llama", Regime.LORA), ("tiny_llama", Regime.PROMPT), ("tiny_llama", Regime.FULL)]
TASKS = {"minilm": Task.CLASSIFICATION, "tiny_llama": Task.CAUSAL_LM}


def _time_step(training: DpSgdRound | PlainRound, module, explicit: ExplicitInputs, task) -> float:
    start = time.perf_counter()
    training.step(lambda tensors: per_example_loss(module, as_batch(tensors, explicit), task))
    return time.perf_counter() - start


def measure(source: str, regime: Regime, seq_len: int, batch_size: int, steps: int) -> dict:
    """Plain and DP steps alternate (A/B/C/A/B/C...) so drifting background load hits all equally."""
    model_cfg = ModelConfig(source=source, regime=regime)
    loaded = load_model(model_cfg, TASKS[source], num_labels=5, random_init=False, seed=0)
    model = apply_regime(loaded.model, model_cfg, loaded.task, loaded.tokenizer_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch_size, seq_len), generator=g)
    data = TensorDataset(ids, torch.ones_like(ids), torch.randint(0, 5, (batch_size,), generator=g),
                         torch.ones_like(ids))  # FIELDS: input_ids, attention_mask, labels, loss_mask
    explicit = explicit_inputs(loaded.model, regime)
    trainings = {}  # label -> (training, the module it calls): the whole batch every step (q = 1)
    for label, clipping in (("plain_s", None), ("per_sample_s", Clipping.PER_SAMPLE), ("ghost_s", Clipping.GHOST)):
        m = copy.deepcopy(model)
        params = [p for _, p in trainable_parameters(m)]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        if clipping is None:
            trainings[label] = (PlainRound(params, optimizer, data, batch_size, 0), m)
        else:
            dp = DpSettings(1.0, Accountant.RDP, clipping)
            module = wrap_for_dp(m, params, dp)
            trainings[label] = (DpSgdRound(module, params, optimizer, data, batch_size, 0, 1.0, dp, []), module)
    times: dict[str, list[float]] = {label: [] for label in trainings}
    for i in range(steps + 1):
        for label, (training, module) in trainings.items():
            t = _time_step(training, module, explicit, loaded.task)
            if i:  # the first step of each warms up allocators and hooks
                times[label].append(t)
    result = {"model": source, "regime": regime.value,
              "trainable": sum(p.numel() for _, p in trainable_parameters(model))}
    result.update({label: statistics.median(ts) for label, ts in times.items()})
    result["per_sample_ratio"] = result["per_sample_s"] / result["plain_s"]
    result["ghost_ratio"] = result["ghost_s"] / result["plain_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = [measure(s, r, args.seq_len, args.batch, args.steps) for s, r in CASES]
    print(f"DP-SGD overhead, batch {args.batch} x {args.seq_len} tokens, median of {args.steps} steps, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | regime | trainable | plain s/step | DP per-sample s/step | DP ghost s/step | per-sample / plain "
          "| ghost / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['regime']} | {r['trainable']:,} | {r['plain_s']:.3f} | {r['per_sample_s']:.3f} | "
              f"{r['ghost_s']:.3f} | {r['per_sample_ratio']:.2f}x | {r['ghost_ratio']:.2f}x |")
    print(json.dumps({"benchmark": "dp_overhead", "seq_len": args.seq_len, "batch": args.batch, "results": rows}))


if __name__ == "__main__":
    main()
