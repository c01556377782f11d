"""privfed on Flower against privfed in one process, same config and seed: what the network engine costs.

1. **Deployment**: the demo (MiniLM + LoRA + DP-SGD at epsilon 8, BBC News) with 3 clients, run by
   ``privfed.engines.inprocess.run`` and over a TLS loopback deployment (a SuperLink and 3 SuperNodes on
   127.0.0.1, ``flwr run``; every Flower message starts a new ClientApp process). Wall-time ratio, whether the
   results are identical, and where the deployment's time goes per round, from the nodes' own timings
   (``aggregation.node_seconds``): ClientApp process start-up (imports), building the model and data, local training,
   protocol work; the rest of a round is Flower's message passing and the server.
2. **Simulation**: a tiny-LLaMA + LoRA + DP round with n = 100 and 1,000 clients, in process and in Flower's
   simulation runtime (Ray, one virtual SuperNode per client, ``flwr run`` on a simulation SuperLink): round
   seconds and run seconds (the Flower run includes starting Ray and greeting every node), and the largest relative
   difference of any metric (Ray runs each ClientApp with one thread per CPU it is given, so float sums may round
   differently from the in-process run's).

One Markdown table per part, last line JSON. Aim: the deployment adds <= 1.5x to the demo's wall time.

    python benchmarks/flower.py [--quick] [--clients 100,1000] [--skip-deployment] [--skip-simulation]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchmark_table import table

AIM = 1.5
COMPARED = ("train_loss", "eval_loss", "eval_accuracy", "eval_perplexity", "epsilon")


def demo_config(quick: bool):
    from privfed.config import load_config

    overrides = ["partition.num_clients=3"] + (["training.rounds=1", "data.eval_examples=100"] if quick else [])
    return load_config(None, overrides)


def sim_config(n: int, quick: bool):
    from privfed.config import from_dict

    return from_dict({
        "name": f"flower-sim-{n}", "seed": 0,
        "data": {"source": "chatterbot", "languages": ["english", "spanish", "portuguese", "german", "french",
                                                       "italian"], "max_length": 32, "eval_examples": 8},
        "partition": {"scheme": "iid", "num_clients": n, "min_examples": 1},
        "model": {"source": "tiny_llama", "regime": "lora"},
        "privacy": {"mode": "fixed_noise", "noise_multiplier": 1.0},
        "training": {"rounds": 1, "local_steps": 1, "batch_size": 4, "optimizer": "adam", "lr": 0.01,
                     "device": "cpu"},
        "federation": {"client_fraction": 0.1 if quick else 1.0},
    })


def flower_run(cfg, work: Path, *, simulation: int | None, timeout: float) -> tuple[dict, float]:
    from privfed.engines.flower.app_folder import write_app_folder
    from privfed.engines.flower.loopback import LoopbackDeployment, SimulationOptions
    from privfed.results import read_results

    out = work / "results"
    app = write_app_folder(cfg, work / "app", out)
    if simulation is None:
        nodes = [{"partition-id": i, "ledger": str(work / f"node-{i}.jsonl"), "reproducible": True}
                 for i in range(cfg.partition.num_clients)]
        deployment = LoopbackDeployment(work / "deployment", nodes, tls=True)
    else:
        deployment = LoopbackDeployment(work / "deployment", [], tls=False,
                                        simulation=SimulationOptions(simulation))
    start = time.perf_counter()
    with deployment:
        outcome = deployment.run(app, timeout)
    seconds = time.perf_counter() - start
    if not outcome.completed:
        raise RuntimeError(f"the Flower run ended {outcome.status}; see {outcome.log}")
    return read_results(out), seconds


def in_process_run(cfg, work: Path) -> tuple[dict, float]:
    from privfed.engines.inprocess import run

    start = time.perf_counter()
    results = run(cfg, work / "inproc", progress=False)
    return results, time.perf_counter() - start


def largest_difference(a: dict, b: dict) -> float:
    """The largest relative difference between two runs' metrics, over every round (0.0: bit-identical)."""
    worst = 0.0
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        for k in COMPARED:
            x, y = ra.get(k), rb.get(k)
            if x is None or y is None or (math.isnan(x) and math.isnan(y)):
                continue
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return worst


def deployment_part(quick: bool, work: Path) -> dict:
    cfg = demo_config(quick)
    local, local_s = in_process_run(cfg, work / "demo")
    flower, flower_s = flower_run(cfg, work / "demo-flower", simulation=None, timeout=3600)
    rows = []
    for r_local, r_flower in zip(local["rounds"], flower["rounds"], strict=True):
        node = r_flower["aggregation"]["node_seconds"]
        rows.append({"round": r_local["round"], "in-process s": r_local["seconds"], "flower s": r_flower["seconds"],
                     "node start-up s": node["process_start"], "node build s": node["build"],
                     "node train s": node["train"], "node protocol s": node["protocol"]})
    print(f"\n## 1. The demo with 3 clients: in process vs a TLS loopback deployment ({len(rows)} rounds)\n")
    print(table(rows, list(rows[0])))
    print("\nnode columns: summed over the round's 3 ClientApp processes, which run in parallel on 2 cores")
    result = {"in_process_s": local_s, "flower_s": flower_s, "ratio": flower_s / local_s,
              "largest_relative_difference": largest_difference(local, flower), "rounds": rows,
              "accuracy": {"in_process": local["final"].get("eval_accuracy"),
                           "flower": flower["final"].get("eval_accuracy")}}
    print(f"\nrun wall time: in process {local_s:.1f} s, Flower {flower_s:.1f} s (incl. starting the SuperLink and "
          f"SuperNodes): {result['ratio']:.2f}x (aim <= {AIM}x); largest relative difference of any metric: "
          f"{result['largest_relative_difference']:.3g} (0 = bit-identical)")
    return result


def simulation_part(clients: list[int], quick: bool, work: Path) -> list[dict]:
    rows = []
    for n in clients:
        cfg = sim_config(n, quick)
        local, local_s = in_process_run(cfg, work / f"sim-{n}")
        flower, flower_s = flower_run(cfg, work / f"sim-{n}-flower", simulation=n, timeout=3600)
        rows.append({"clients": n, "trained": local["rounds"][0]["clients_trained"],
                     "in-process round s": local["rounds"][0]["seconds"],
                     "flower round s": flower["rounds"][0]["seconds"],
                     "round ratio": flower["rounds"][0]["seconds"] / local["rounds"][0]["seconds"],
                     "in-process run s": local_s, "flower run s": flower_s,
                     "largest relative difference": largest_difference(local, flower)})
    print("\n## 2. Tiny LLaMA + LoRA + DP, one round: in process vs Flower's simulation runtime (Ray)\n")
    print(table(rows, list(rows[0])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo 1 round; simulation rounds sample 10 %")
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--skip-deployment", action="store_true")
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args()
    result: dict = {"benchmark": "flower", "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_deployment:
            result["deployment"] = deployment_part(args.quick, work)
        if not args.skip_simulation:
            result["simulation"] = simulation_part([int(n) for n in args.clients.split(",")], args.quick, work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
