"""Scale: one model for every client. privfed's memory and time per client-step for n = 10 .. 1,000 clients,
against a bare single-model DP-SGD loop over the same batches.

Tiny LLaMA + LoRA, DP-SGD (fixed noise), one round, one local step, every client sampled, chatterbot (all
languages, iid). For each n, in a fresh subprocess each (so peak RSS is that n's):

* **privfed**: ``privfed.engines.inprocess.run`` of the whole experiment; s/client-step = the sum of the
  ``ClientTrained`` events' ``update.seconds`` (a client's local training incl. its per-client setup: optimizer,
  Poisson loader, accountant, checks) / client-steps; also the round's wall time (training, aggregation, evaluation,
  privacy report) and the whole run's.
  In the same process, a timer around ``DpSgdRound._physical_step`` (forward, backward, ``DPOptimizer.step``: the
  work the bare loop also does) splits that time into compute and privfed's per-client setup; ``client / compute``
  is their ratio, immune to background load drifting between the two processes.
* **bare**: the same model wrapped once by Opacus' ``PrivacyEngine.make_private`` with one Adam, stepping once per
  client on that client's Poisson batch (the same rows privfed's loader draws: same seed, same sampling), with no
  per-client machinery; s/step = the loop's time / steps (incl. drawing the batch).

Peak memory is ``ru_maxrss`` of the subprocess (imports, data, model, everything). Aims: privfed's peak at
n = 1,000 <= 1.5x its peak at n = 10, and privfed s/client-step <= 1.3x bare s/step. One Markdown table, last line
JSON.

``--smollm2`` instead: SmolLM2-135M + LoRA + DP, a federation of 5 and of 50 clients built, 3 clients trained one
step each (batch 4, 64 tokens): peak memory of each.

    python benchmarks/scale.py [--clients 10,100,1000] [--quick] [--smollm2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmark_table, when run as a subprocess

AIM_MEMORY = 1.5  # privfed peak at the largest n / at the smallest n
AIM_TIME = 1.3  # privfed s/client-step / bare s/step
BATCH = 4
MAX_LENGTH = 32
EVAL_EXAMPLES = 8  # evaluation is not what is measured; kept small so its logits do not set the peak
SMOLLM2_TRAINED = 3


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def all_languages() -> tuple[str, ...]:
    from privfed import assets
    return tuple(sorted(p.name for p in assets.chatterbot_dir().iterdir() if p.is_dir()))


def scale_config(n: int, languages: tuple[str, ...]):
    from privfed.config import from_dict
    return from_dict({
        "name": f"scale-{n}", "seed": 0,
        "data": {"source": "chatterbot", "languages": list(languages), "max_length": MAX_LENGTH,
                 "eval_examples": EVAL_EXAMPLES},
        "partition": {"scheme": "iid", "num_clients": n},
        "model": {"source": "tiny_llama", "regime": "lora"},
        "privacy": {"mode": "fixed_noise", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
        "training": {"rounds": 1, "local_steps": 1, "batch_size": BATCH, "optimizer": "adam", "lr": 0.01,
                     "device": "cpu"},
        "federation": {"client_fraction": 1.0},
    })


# ---------------------------------------------------------------- the two sides, each in its own process


def privfed_worker(n: int, languages: tuple[str, ...]) -> dict:
    from privfed.engines.inprocess import run
    from privfed.privacy.dpsgd import DpSgdRound
    from privfed.server.events import Callback

    class Timing(Callback):
        def __init__(self):
            self.seconds, self.steps, self.round_s, self.losses = [], 0, math.nan, {}

        def on_client_trained(self, event) -> None:
            self.seconds.append(event.update.seconds)
            self.steps += event.update.steps
            self.losses[event.update.client] = event.update.train_loss

        def on_round_committed(self, record, state) -> None:
            self.round_s = record.seconds

    # Where a client's time goes, measured in the same process (so background load hits both parts alike): a
    # timer around DpSgdRound._physical_step (forward, backward, DPOptimizer.step: what the bare loop does too);
    # the rest of update.seconds is privfed's per-client work (seeding, load, optimizer, loader, accountant, checks)
    original = DpSgdRound._physical_step
    compute: list[float] = []

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            compute.append(time.perf_counter() - t0)

    cfg = scale_config(n, languages)
    timing = Timing()
    start = time.perf_counter()
    DpSgdRound._physical_step = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            run(cfg, Path(out), progress=False, callbacks=(timing,))
    finally:
        DpSgdRound._physical_step = original
    total = sum(timing.seconds)
    return {"side": "privfed", "n": n, "peak_mb": peak_mb(), "client_steps": timing.steps,
            "s_per_step": total / timing.steps, "median_s_per_step": statistics.median(timing.seconds),
            "compute_s_per_step": sum(compute) / timing.steps, "setup_s_per_client": (total - sum(compute)) / n,
            "in_process_ratio": total / sum(compute),
            "first_s": timing.seconds[0], "round_s": timing.round_s, "run_s": time.perf_counter() - start,
            "losses": [timing.losses[c] for c in sorted(timing.losses)]}


def poisson_rows(seed: int, round_idx: int, client: int, shard, batch_size: int):
    """The rows of ``shard`` (pool indices) that privfed's Poisson loader draws for ``client`` in ``round_idx``.

    privfed seeds torch with derive_seed(seed, round, client); the DataLoader iterator then draws its base seed
    (one int64) and Opacus' UniformWithReplacementSampler keeps each row with probability q = 1/ceil(n/B).
    """
    import torch

    from privfed.federation.vectors import derive_seed
    from privfed.privacy.dpsgd import poisson_sample_rate
    torch.manual_seed(derive_seed(seed, round_idx, client))
    torch.empty((), dtype=torch.int64).random_()  # torch.utils.data's _get_shared_seed
    keep = torch.rand(len(shard)) < poisson_sample_rate(len(shard), batch_size)
    return shard[keep.numpy()]


def bare_data(cfg):
    """The tokenised pool and the clients' shards, drawn exactly as build_federation draws them."""
    import numpy as np

    from privfed.data.partition import partition
    from privfed.data.sources import load_data
    from privfed.federation.setup import split_train_test
    from privfed.federation.vectors import derive_seed
    rng = np.random.default_rng(derive_seed(cfg.seed, 0xDA7A))
    data = load_data(cfg.data)
    assert not cfg.data.max_examples
    train_idx, test_idx = split_train_test(len(data), cfg.data.test_fraction, rng)
    pool = data.subset(train_idx)
    if cfg.data.eval_examples and len(test_idx) > cfg.data.eval_examples:
        rng.choice(len(test_idx), cfg.data.eval_examples, replace=False)  # build_federation's draw, kept in step
    return pool, partition(pool, cfg.partition, rng)


def bare_worker(n: int, languages: tuple[str, ...]) -> dict:
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    from privfed.config import Task
    from privfed.data.tokenize import as_batch, tokenize
    from privfed.federation.vectors import derive_seed
    from privfed.models.losses import per_example_loss
    from privfed.models.regimes import apply_regime, trainable_parameters
    from privfed.models.sources import load_model

    cfg = scale_config(n, languages)
    start = time.perf_counter()
    pool_text, shards = bare_data(cfg)
    loaded = load_model(cfg.model, Task.CAUSAL_LM, num_labels=1, random_init=False,
                        seed=derive_seed(cfg.seed, 0x30DE1))
    model = apply_regime(loaded.model, cfg.model, loaded.task, loaded.tokenizer_dir)
    pool = tokenize(pool_text, loaded.tokenizer, cfg.data.max_length)
    params = [p for _, p in trainable_parameters(model)]
    module, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.Adam(params, lr=cfg.training.lr),
        data_loader=DataLoader(pool, batch_size=BATCH), noise_multiplier=cfg.privacy.noise_multiplier,
        max_grad_norm=cfg.privacy.max_grad_norm, poisson_sampling=False)
    module.train()
    seconds, compute, losses = [], [], []
    for cid, shard in enumerate(shards):
        t0 = time.perf_counter()
        rows = torch.from_numpy(poisson_rows(cfg.seed, 1, cid, shard, BATCH))
        t1 = time.perf_counter()
        if len(rows) == 0:  # an empty Poisson batch: a noisy step of a zero clipped gradient, as privfed does
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            losses.append(math.nan)
        else:
            batch = as_batch(tuple(t[rows] for t in pool.tensors))
            per_example = per_example_loss(module, batch, loaded.task)
            per_example.mean().backward()
            losses.append(float(per_example.detach().mean()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        seconds.append(t2 - t0)
        compute.append(t2 - t1)
    sizes = [len(s) for s in shards]
    return {"side": "bare", "n": n, "peak_mb": peak_mb(), "steps": len(seconds),
            "s_per_step": sum(seconds) / len(seconds), "median_s_per_step": statistics.median(seconds),
            "compute_s_per_step": sum(compute) / len(compute), "first_s": seconds[0], "loop_s": sum(seconds),
            "run_s": time.perf_counter() - start,
            "examples_per_client": [min(sizes), max(sizes)], "pool": len(pool), "losses": losses}


def smollm2_worker(n: int) -> dict:
    from privfed.config import from_dict
    from privfed.federation.setup import build_federation

    cfg = from_dict({
        "name": f"smollm2-{n}", "seed": 0,
        "data": {"source": "chatterbot", "max_length": 64, "eval_examples": EVAL_EXAMPLES},
        "partition": {"scheme": "iid", "num_clients": n},
        "model": {"source": "smollm2", "regime": "lora"},
        "privacy": {"mode": "fixed_noise", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
        "training": {"rounds": 1, "local_steps": 1, "batch_size": 4, "device": "cpu"},
    })
    start = time.perf_counter()
    fed = build_federation(cfg)
    built_s, built_mb = time.perf_counter() - start, peak_mb()
    seconds, batches = [], []
    for client in fed.clients[:SMOLLM2_TRAINED]:
        trained = fed.runtime.train(client, fed.shard(client), 1, fed.initial_vector, [])
        seconds.append(trained.update.seconds)
        rows = poisson_rows(cfg.seed, 1, client.id, client.shard, cfg.training.batch_size)  # the batch it drew
        tokens = int(fed.pool.tensors[1][rows].sum(dim=1).max()) if len(rows) else 0
        batches.append(f"{len(rows)}x{tokens}")
    return {"side": "smollm2", "n": n, "peak_mb": peak_mb(), "peak_after_build_mb": built_mb, "build_s": built_s,
            "trained": len(seconds), "batches": batches, "s_per_step": sum(seconds) / len(seconds),
            "trainable": fed.num_trainable,
            "examples_per_client": [min(c.num_examples for c in fed.clients),
                                    max(c.num_examples for c in fed.clients)]}


# ---------------------------------------------------------------- the parent: one fresh process per measurement


def in_subprocess(*args: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          env=env, check=False)  # a failed worker is reported below, with its stderr
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {' '.join(args)} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def scale(clients: list[int], languages: str) -> None:
    from benchmark_table import table
    rows = []
    for n in clients:  # privfed then bare for each n, so drifting background load hits both sides alike
        p = in_subprocess("--worker", "privfed", "--n", str(n), "--languages", languages)
        b = in_subprocess("--worker", "bare", "--n", str(n), "--languages", languages)
        # both start from the same initial model, so the first client's loss tells whether its batch is the same
        same_batches = (math.isnan(p["losses"][0]) and math.isnan(b["losses"][0])) or math.isclose(
            p["losses"][0], b["losses"][0], rel_tol=1e-5)
        rows.append({"n": n, "examples/client": "{}-{}".format(*b["examples_per_client"]),
                     "privfed peak MB": p["peak_mb"], "bare peak MB": b["peak_mb"],
                     "privfed s/client-step": p["s_per_step"], "bare s/step": b["s_per_step"],
                     "ratio": p["s_per_step"] / b["s_per_step"],
                     "privfed setup ms/client": 1000 * p["setup_s_per_client"],
                     "privfed client / compute": p["in_process_ratio"],
                     "privfed median s": p["median_s_per_step"], "bare median s": b["median_s_per_step"],
                     "privfed round s": p["round_s"], "privfed run s": p["run_s"], "bare run s": b["run_s"],
                     "_privfed": {k: v for k, v in p.items() if k != "losses"},
                     "_bare": {k: v for k, v in b.items() if k != "losses"}, "_same_first_batch": same_batches})
    import torch
    print(f"Scale: one model for every client. Tiny LLaMA + LoRA, DP-SGD (sigma 1, C 1), 1 round x 1 local step, "
          f"batch {BATCH} (Poisson), {MAX_LENGTH} tokens, chatterbot iid, every client sampled; "
          f"{torch.get_num_threads()} threads\n")
    print(table(rows, ["n", "examples/client", "privfed peak MB", "bare peak MB", "privfed s/client-step",
                       "bare s/step", "ratio", "privfed median s", "bare median s", "privfed setup ms/client",
                       "privfed client / compute", "privfed round s"]))
    small, large = rows[0], rows[-1]
    memory_ratio = large["privfed peak MB"] / small["privfed peak MB"]
    worst_time = max(r["ratio"] for r in rows)
    aims = {"memory": {"aim": f"privfed peak at n={large['n']} <= {AIM_MEMORY}x at n={small['n']}",
                       "ratio": memory_ratio, "result": verdict(memory_ratio <= AIM_MEMORY)},
            "time": {"aim": f"privfed s/client-step <= {AIM_TIME}x bare s/step at every n", "worst_ratio": worst_time,
                     "ratios": {str(r["n"]): r["ratio"] for r in rows}, "result": verdict(worst_time <= AIM_TIME)}}
    print(f"\nmemory: n={large['n']} / n={small['n']} = {memory_ratio:.3f}x (aim <= {AIM_MEMORY}x): "
          f"{aims['memory']['result']}")
    ratios = ", ".join(f"{r['ratio']:.2f}x" for r in rows)
    print(f"time: privfed / bare = {ratios} (aim <= {AIM_TIME}x): {aims['time']['result']}")
    if not all(r["_same_first_batch"] for r in rows):
        print("warning: the first client's loss differs between privfed and bare: not the same batches")
    print(json.dumps({"benchmark": "scale", "model": "tiny_llama", "regime": "lora", "batch": BATCH,
                      "max_length": MAX_LENGTH, "languages": languages, "threads": torch.get_num_threads(),
                      "results": [{k.lstrip("_"): v for k, v in r.items()} for r in rows], "aims": aims}))


def smollm2(counts: tuple[int, int] = (5, 50)) -> None:
    from benchmark_table import table
    in_subprocess("--worker", "prepare")  # the one-time GGUF conversion, so that no measured process pays for it
    results = [in_subprocess("--worker", "smollm2", "--n", str(n)) for n in counts]
    rows = [{"clients": r["n"], "examples/client": "{}-{}".format(*r["examples_per_client"]),
             "trainable": r["trainable"], "peak MB after build": r["peak_after_build_mb"],
             "peak MB after training": r["peak_mb"], "trained": r["trained"],
             "batches (rows x tokens)": ", ".join(r["batches"]), "s/client-step": r["s_per_step"],
             "build s": r["build_s"]} for r in results]
    print(f"SmolLM2-135M + LoRA, DP-SGD (sigma 1, C 1), batch 4, 64 tokens, chatterbot english iid: federation "
          f"built, {SMOLLM2_TRAINED} clients trained one step each\n")
    print(table(rows, list(rows[0])))
    ratio = results[-1]["peak_mb"] / results[0]["peak_mb"]
    print(f"\npeak at {counts[1]} clients / at {counts[0]}: {ratio:.3f}x")
    print(json.dumps({"benchmark": "scale_smollm2", "results": results, "peak_ratio": ratio}))


def main() -> None:
    parser = argparse.ArgumentParser(description="Scale: privfed's memory and time per client-step vs a bare "
                                                 "single-model DP-SGD loop over the same batches")
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated numbers of clients")
    parser.add_argument("--quick", action="store_true", help="10,100 clients only")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2: 50 vs 5 clients, 3 trained (instead)")
    parser.add_argument("--languages", default="all", help="chatterbot languages, comma-separated, or all")
    parser.add_argument("--worker", choices=["privfed", "bare", "smollm2", "prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        warnings.filterwarnings("ignore")
        languages = all_languages() if args.languages == "all" else tuple(args.languages.split(","))
        if args.worker == "prepare":
            from privfed.models.sources import smollm2_dir
            print(json.dumps({"cache": str(smollm2_dir())}))
            return
        worker = {"privfed": privfed_worker, "bare": bare_worker}.get(args.worker)
        result = worker(args.n, languages) if worker else smollm2_worker(args.n)
        print(json.dumps(result))
        return
    if args.smollm2:
        smollm2()
        return
    scale([10, 100] if args.quick else [int(c) for c in args.clients.split(",")], args.languages)


if __name__ == "__main__":
    main()
