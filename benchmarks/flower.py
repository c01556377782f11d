"""privfed on Flower against privfed in one process, same config and seed: what the network engine costs.

1. **Deployment**: the demo (MiniLM + LoRA + DP-SGD at epsilon 8, BBC News) with 3 clients, run by
   ``privfed.engines.inprocess.run`` and over a TLS loopback deployment (a SuperLink and 3 SuperNodes on
   127.0.0.1, ``flwr run``) twice: with privfed's warm node workers (one long-lived process per SuperNode,
   ``flower-supernode --isolation process``) and with stock Flower (a new ClientApp process for every message).
   Wall-time ratios, whether the results are identical, and where each round's time goes, from the nodes' own
   timings (``aggregation.node_seconds``): ClientApp process start-up (imports), building the model and data, local
   training, protocol work; the rest of a round is Flower's message passing and the server.
2. **Per-message overhead with SmolLM2-135M** (``--smollm2``): SmolLM2 + LoRA on the chat data, 2 clients, 2
   rounds of SecAgg (four messages a node a round, one of which trains), warm workers against stock Flower: a
   node's time per message that is not training (start-up + build + protocol, over the round's messages).
3. **Simulation**: a tiny-LLaMA + LoRA + DP round with n = 100 and 1,000 clients, in process and in Flower's
   simulation runtime (Ray, one virtual SuperNode per client, ``flwr run`` on a simulation SuperLink): round
   seconds and run seconds (the Flower run includes starting Ray and greeting every node), and the largest relative
   difference of any metric (Ray runs each ClientApp with one thread per CPU it is given, so float sums may round
   differently from the in-process run's).

One Markdown table per part, last line JSON. Aims: the warm deployment <= 1.3x the demo's in-process wall time; a
node's overhead per message after its first <= 1 s with SmolLM2.

    python benchmarks/flower.py [--quick] [--smollm2] [--clients 100,1000] [--skip-deployment] [--skip-stock]
                                [--skip-simulation]
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

AIM = 1.3
MESSAGE_AIM = 1.0  # seconds of node overhead per message after the first, SmolLM2
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


def flower_run(cfg, work: Path, *, simulation: int | None, timeout: float, warm: bool = True,
               runs: int = 1) -> list[tuple[dict, float]]:
    """``runs`` runs of ``cfg`` on one deployment: each one's results and seconds (the first's include starting
    the SuperLink and the nodes; later runs find the nodes running, as a long-lived deployment does). The nodes
    keep their ledgers in Flower's state, one run long, so a later run is not refused for a spent budget."""
    from privfed.engines.flower.app_folder import write_app_folder
    from privfed.engines.flower.loopback import LoopbackDeployment, SimulationOptions
    from privfed.run_result import read_results

    out = work / "results"
    app = write_app_folder(cfg, work / "app", out)
    if simulation is None:
        nodes = [{"partition-id": i, "reproducible": True} for i in range(cfg.partition.num_clients)]
        deployment = LoopbackDeployment(work / "deployment", nodes, tls=True, warm=warm)
    else:
        deployment = LoopbackDeployment(work / "deployment", [], tls=False,
                                        simulation=SimulationOptions(simulation))
    done = []
    start = time.perf_counter()
    with deployment:
        for i in range(runs):
            outcome = deployment.run(app, timeout)
            if not outcome.completed:
                raise RuntimeError(f"the Flower run ended {outcome.status}; see {outcome.log}")
            seconds = time.perf_counter() - start if i == 0 else outcome.seconds
            done.append((read_results(out if i == 0 else out.with_name(f"{out.name}-{i + 1}")), seconds))
    return done


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


def node_rows(local: dict, flower: dict, label: str) -> list[dict]:
    rows = []
    for r_local, r_flower in zip(local["rounds"], flower["rounds"], strict=True):
        node = r_flower["aggregation"]["node_seconds"]
        rows.append({"nodes": label, "round": r_local["round"], "in-process s": r_local["seconds"],
                     "flower s": r_flower["seconds"], "node start-up s": node["process_start"],
                     "node build s": node["build"], "node train s": node["train"], "node protocol s": node["protocol"]})
    return rows


def deployment_part(quick: bool, work: Path, stock: bool) -> dict:
    cfg = demo_config(quick)
    local, local_s = in_process_run(cfg, work / "demo")
    runs = {"warm workers": flower_run(cfg, work / "demo-warm", simulation=None, timeout=3600, runs=2)}
    if stock:
        runs["stock Flower"] = flower_run(cfg, work / "demo-stock", simulation=None, timeout=3600, warm=False, runs=2)
    rows = [row for label, done in runs.items() for row in node_rows(local, done[0][0], label)]
    print(f"\n## 1. The demo with 3 clients: in process vs a TLS loopback deployment ({cfg.training.rounds} rounds)\n")
    print(table(rows, list(rows[0])))
    print("\nnode columns: summed over the round's 3 nodes, which run in parallel on 2 cores (first run)\n")
    result: dict = {"in_process_s": local_s, "rounds": rows}
    runs_table = []
    for label, done in runs.items():
        for i, (flower, flower_s) in enumerate(done, start=1):
            difference = largest_difference(local, flower)
            runs_table.append({"nodes": label, "run": "first (starts the deployment)" if i == 1 else
                               "second (nodes already running)", "in-process s": local_s, "flower s": flower_s,
                               "ratio": flower_s / local_s, "largest relative difference": difference})
        result[label.split()[0]] = [{"flower_s": s, "ratio": s / local_s,
                                     "largest_relative_difference": largest_difference(local, r),
                                     "accuracy": r["final"].get("eval_accuracy")} for r, s in done]
    print(table(runs_table, list(runs_table[0])))
    print(f"\naim: the warm deployment <= {AIM}x the in-process wall time; difference 0 = bit-identical")
    result["runs"] = runs_table
    return result


def smollm2_config(quick: bool):
    from privfed.config import load_config

    return load_config(HERE.parent / "experiments" / "chatterbot_smollm2_lora.yaml",
                       ["partition.num_clients=2", "training.rounds=2", "training.local_steps=1",
                        "data.eval_examples=16", "aggregation=secagg", "flower.train_timeout=900",
                        "flower.stage_timeout=600", *(["training.rounds=1"] if quick else [])])


def smollm2_part(quick: bool, work: Path, stock: bool) -> dict:
    """A node's overhead per message (not training) with SmolLM2, warm workers vs stock Flower."""
    cfg = smollm2_config(quick)
    local, _ = in_process_run(cfg, work / "smollm2")
    runs = {"warm workers": flower_run(cfg, work / "smollm2-warm", simulation=None, timeout=3600)[0]}
    if stock:
        runs["stock Flower"] = flower_run(cfg, work / "smollm2-stock", simulation=None, timeout=3600, warm=False)[0]
    rows, result = [], {}
    messages = 4 * cfg.partition.num_clients  # a secagg round: four messages a node (the hello comes before)
    for label, (flower, flower_s) in runs.items():
        for row in node_rows(local, flower, label):
            overhead = row["node start-up s"] + row["node build s"] + row["node protocol s"]
            rows.append({**row, "node overhead s per message": overhead / messages})
        later = [r["node overhead s per message"] for r in rows if r["nodes"] == label and r["round"] > 1]
        result[label.split()[0]] = {"flower_s": flower_s, "overhead_per_message_after_first_round": later,
                                    "largest_relative_difference": largest_difference(local, flower)}
    print("\n## 2. SmolLM2-135M + LoRA, 2 nodes, SecAgg: a node's time per message that is not training\n")
    print(table(rows, list(rows[0])))
    print(f"\noverhead: start-up + build + protocol, summed over the round's {messages} node messages, per message "
          f"(aim <= {MESSAGE_AIM} s after the first round)")
    return {"rows": rows, **result}


def simulation_part(clients: list[int], quick: bool, work: Path) -> list[dict]:
    rows = []
    for n in clients:
        cfg = sim_config(n, quick)
        local, local_s = in_process_run(cfg, work / f"sim-{n}")
        flower, flower_s = flower_run(cfg, work / f"sim-{n}-flower", simulation=n, timeout=3600)[0]
        rows.append({"clients": n, "trained": local["rounds"][0]["clients_trained"],
                     "in-process round s": local["rounds"][0]["seconds"],
                     "flower round s": flower["rounds"][0]["seconds"],
                     "round ratio": flower["rounds"][0]["seconds"] / local["rounds"][0]["seconds"],
                     "in-process run s": local_s, "flower run s": flower_s,
                     "largest relative difference": largest_difference(local, flower)})
    print("\n## 3. Tiny LLaMA + LoRA + DP, one round: in process vs Flower's simulation runtime (Ray)\n")
    print(table(rows, list(rows[0])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo 1 round; simulation rounds sample 10 %")
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--skip-deployment", action="store_true")
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--skip-stock", action="store_true", help="warm workers only (stock Flower is slow)")
    parser.add_argument("--smollm2", action="store_true", help="part 2: SmolLM2's per-message overhead")
    args = parser.parse_args()
    result: dict = {"benchmark": "flower", "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_deployment:
            result["deployment"] = deployment_part(args.quick, work, not args.skip_stock)
        if args.smollm2:
            result["smollm2"] = smollm2_part(args.quick, work, not args.skip_stock)
        if not args.skip_simulation:
            result["simulation"] = simulation_part([int(n) for n in args.clients.split(",")], args.quick, work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
