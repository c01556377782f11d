"""DP-SGD step time / non-private step time on the same model and batch, in one run.

For each (model, regime): the same batch goes through (a) plain PyTorch forward/backward/Adam step and (b) the
same through Opacus' GradSampleModule + DPOptimizer (per-sample gradients, clipping, noise). Reports the median of
several timed steps after warm-up, the ratio, and last one JSON line.

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
from torch.utils.data import DataLoader, TensorDataset

from privfed.config import ModelConfig, ModelSource, Regime
from privfed.data.tokenize import as_batch
from privfed.models.losses import per_example_loss
from privfed.models.regimes import apply_regime, trainable_parameters
from privfed.models.sources import load_model
from privfed.privacy.dpsgd import DpSettings, PrivateTraining
from privfed.config import Accountant

CASES = [(ModelSource.MINILM, Regime.LORA), (ModelSource.MINILM, Regime.PROMPT), (ModelSource.MINILM, Regime.FULL),
         (ModelSource.TINY_LLAMA, Regime.LORA), (ModelSource.TINY_LLAMA, Regime.PROMPT),
         (ModelSource.TINY_LLAMA, Regime.FULL)]


def _timed_steps(training: PrivateTraining, batch: dict, task, steps: int) -> float:
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = per_example_loss(training.module, batch, task).mean()
        training.step(loss)
        if i:  # the first step warms up allocators and hooks
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(source: ModelSource, regime: Regime, seq_len: int, batch_size: int, steps: int) -> dict:
    loaded = load_model(source, num_labels=5, random_init=False, seed=0)
    model = apply_regime(loaded.model, ModelConfig(source=source, regime=regime), loaded.task)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch_size, seq_len), generator=g)
    data = TensorDataset(ids, torch.ones_like(ids), torch.randint(0, 5, (batch_size,), generator=g))
    explicit = regime is Regime.FULL and loaded.task.value == "classification"
    batch = as_batch(next(iter(DataLoader(data, batch_size=batch_size))), explicit)
    result = {"model": source.value, "regime": regime.value}
    for label, sigma in (("plain_s", None), ("dp_s", 1.0)):
        m = copy.deepcopy(model)
        params = [p for _, p in trainable_parameters(m)]
        training = PrivateTraining(m, params, data, batch_size, torch.optim.Adam(params, lr=1e-4),
                                   DpSettings(sigma, 1.0, Accountant.RDP))
        result[label] = _timed_steps(training, batch, loaded.task, steps)
    result["trainable"] = sum(p.numel() for _, p in trainable_parameters(model))
    result["ratio"] = result["dp_s"] / result["plain_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = [measure(s, r, args.seq_len, args.batch, args.steps) for s, r in CASES]
    print(f"DP-SGD overhead, batch {args.batch} x {args.seq_len} tokens, median of {args.steps} steps, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | regime | trainable | plain s/step | DP s/step | DP / plain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['regime']} | {r['trainable']:,} | {r['plain_s']:.3f} | {r['dp_s']:.3f} | "
              f"{r['ratio']:.2f}x |")
    print(json.dumps({"benchmark": "dp_overhead", "seq_len": args.seq_len, "batch": args.batch, "results": rows}))


if __name__ == "__main__":
    main()
