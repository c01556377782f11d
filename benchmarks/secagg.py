"""Secure aggregation costs, measured in one run: privfed vs its limits and vs Flower, on the same inputs.

1. mask throughput: applying one AES-256-CTR mask to a vector (keystream + add, in place), as a share of the raw
   AES-256-CTR keystream rate of ``cryptography`` on this machine (the ceiling; aim >= 0.5);
2. mask generation for k neighbours + the self mask, privfed vs Flower's SecAgg+ ``pseudo_rand_gen`` (numpy's
   Mersenne Twister seeded with 32 bits) plus the same modular add, same k and length (needs ``flwr``);
3. one whole SecAgg+ round in process for n = 10, 100, 1000 clients, d = 100,000, k = 2 ceil(log2 n), 5 % of
   the clients dropping before their masked input (so the server must rebuild their masks): server seconds,
   and the server seconds / (n log2 n) and / n^2 to show which one stays flat;
4. the default experiment (``privfed run``) with secagg vs plain: round time ratio (aim <= 1.25);
5. the server's share recovery for n = 1,000 clients (each seed a 32-byte secret, t of its k + 1 shares):
   pycryptodome's ``Shamir.combine`` one secret at a time (privfed <= 0.7) vs ``privfed.secure.shamir.combine_many``
   (all at once; aim <= 2 s), on the same shares.

    python benchmarks/secagg.py [--quick] [--skip-e2e]

Prints a table per part and, last, one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmark_table import table  # benchmarks/benchmark_table.py, beside this script
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privfed.aggregation import InProcessTransport, run_protocol
from privfed.aggregation.secagg import SecAggBackend
from privfed.config import Aggregation, AggregationConfig, DropoutStage
from privfed.secure.graph import suggested_degree
from privfed.secure.primitives import MaskStream, fresh_secret


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mask_throughput(d: int, repeats: int) -> dict:
    key, zeros = os.urandom(32), bytes(4 * d)
    raw = median_seconds(lambda: Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(zeros),
                         repeats)
    stream, target, seed = MaskStream(), np.zeros(d, dtype=np.uint32), fresh_secret()
    masked = median_seconds(lambda: stream.add(target, seed), repeats)
    return {"d": d, "raw_aes_ctr_words_per_s": d / raw, "mask_params_per_s": d / masked, "ratio": raw / masked}


def flower_comparison(d: int, k: int, repeats: int) -> dict:
    try:
        import flwr
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    except ImportError:
        return {"flwr": None, "note": "flwr is not installed: ./install.sh --flower (see benchmarks/README.md)"}
    seeds = [fresh_secret() for _ in range(k + 1)]
    modulus = 1 << 32

    def flower() -> None:  # what Flower's SecAgg+ client does per mask: generate, add, reduce
        total = np.zeros(d, dtype=np.int64)
        for seed in seeds:
            total += pseudo_rand_gen(seed, modulus, [(d,)])[0]
            total &= modulus - 1

    def privfed() -> None:
        total = np.zeros(d, dtype=np.uint32)
        stream = MaskStream()
        for i, seed in enumerate(seeds):
            stream.add(total, seed, subtract=bool(i % 2))

    f, p = median_seconds(flower, repeats), median_seconds(privfed, repeats)
    return {"flwr": flwr.__version__, "d": d, "masks": k + 1, "flower_s": f, "privfed_s": p, "speedup": f / p,
            "flower_upload_bytes": 8 * d, "privfed_upload_bytes": 4 * d}


def full_round(n: int, d: int, drop_fraction: float) -> dict:
    cfg = AggregationConfig(method=Aggregation.SECAGG, neighbours=suggested_degree(n),
                            dropout_stage=DropoutStage.MASKED_INPUT)
    backend = SecAggBackend(cfg, n, d)
    rng = np.random.default_rng(n)
    updates = {c: rng.uniform(-1, 1, d) for c in range(n)}
    dropped = rng.choice(n, size=max(1, round(drop_fraction * n)), replace=False)
    server = backend.server_half(1, list(range(n)))
    clients = {c: backend.client_half(1, c) for c in range(n)}
    start = time.perf_counter()
    outcome = run_protocol(server, InProcessTransport(clients, updates.get,
                                                      {int(c): DropoutStage.MASKED_INPUT for c in dropped}))
    wall = time.perf_counter() - start
    details = backend.complete(outcome, [clients[c].report() for c in sorted(clients)]).details
    server_s = details["server_crypto_seconds"]
    return {"n": n, "d": d, "k": details["neighbours"], "threshold": details["threshold"], "dropped": len(dropped),
            "recovered": details["dropouts_recovered"], "server_s": server_s,
            "client_s_mean": details["client_crypto_seconds"], "round_wall_s": wall,
            "server_per_nlogn_us": server_s / (n * math.log2(n)) * 1e6,
            "server_per_n2_us": server_s / n ** 2 * 1e6,
            "bytes_up_per_client": statistics.mean(c.bytes_sent for c in clients.values())}


def share_recovery(n: int, repeats: int) -> dict:
    """Recover n clients' seeds from t shares each, one at a time with pycryptodome and all at once."""
    from Crypto.Protocol.SecretSharing import Shamir

    from privfed.secure.graph import round_threshold
    from privfed.secure.primitives import split_secret
    from privfed.secure.shamir import combine_many, lagrange_at_zero

    k = suggested_degree(n)
    t = round_threshold(n, k, 0.6)
    secrets = {c: fresh_secret() for c in range(n)}
    shares = {c: split_secret(s, t, k + 1)[:t] for c, s in secrets.items()}

    def one_at_a_time() -> dict[int, bytes]:
        return {c: Shamir.combine([(i, s[:16]) for i, s in sh]) + Shamir.combine([(i, s[16:]) for i, s in sh])
                for c, sh in shares.items()}

    def all_at_once() -> dict[int, bytes]:
        lagrange_at_zero.cache_clear()  # as in a first round: the coefficients are computed, not cached
        return combine_many(shares, t)

    assert one_at_a_time() == all_at_once() == secrets
    old, new = median_seconds(one_at_a_time, max(1, repeats // 10)), median_seconds(all_at_once, repeats)
    return {"n": n, "k": k, "threshold": t, "pycryptodome_one_at_a_time_s": old, "privfed_all_at_once_s": new,
            "speedup": old / new}


def end_to_end() -> dict:
    from privfed.config import load_config
    from privfed.engines.inprocess import run

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("plain", "secagg", "plain", "secagg"):  # interleaved: drift hits both equally
            res = run(load_config(None, [f"aggregation={method}", f"name=bench-{method}"]),
                      Path(tmp) / method, overwrite=True, progress=False)
            out.setdefault(method, []).append((sum(r["seconds"] for r in res["rounds"]),
                                               res["final"]["eval_accuracy"],
                                               sum(r.get("aggregation_seconds", 0.0) for r in res["rounds"])))
    plain = min(t for t, _, _ in out["plain"])
    secure = min(t for t, _, _ in out["secagg"])
    return {"plain_round_s": plain / 3, "secagg_round_s": secure / 3, "ratio": secure / plain,
            "plain_accuracy": out["plain"][0][1], "secagg_accuracy": out["secagg"][0][1],
            "secagg_aggregation_s_per_round": min(a for _, _, a in out["secagg"]) / 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n up to 100 and fewer repeats (a smoke test)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the two default experiments (~6 min)")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20
    result: dict = {}

    result["mask_throughput"] = mask_throughput(1_000_000, repeats)
    print("## 1. Mask throughput (d = 1,000,000, 32-bit words)\n")
    print(table([result["mask_throughput"]], ["d", "raw_aes_ctr_words_per_s", "mask_params_per_s", "ratio"]))

    result["vs_flower"] = flower_comparison(100_000, 14, repeats)
    print("\n## 2. Mask generation for 14 neighbours + self mask, d = 100,000: privfed vs Flower\n")
    if result["vs_flower"]["flwr"] is None:
        print(result["vs_flower"]["note"])
    else:
        print(table([result["vs_flower"]], ["flwr", "masks", "flower_s", "privfed_s", "speedup",
                                            "flower_upload_bytes", "privfed_upload_bytes"]))

    sizes = (10, 100) if args.quick else (10, 100, 1000)
    result["rounds"] = [full_round(n, 100_000, 0.05) for n in sizes]
    print("\n## 3. One SecAgg+ round, d = 100,000, 5 % dropping before masked input\n")
    print(table(result["rounds"], ["n", "k", "threshold", "dropped", "recovered", "server_s", "client_s_mean",
                                   "round_wall_s", "server_per_nlogn_us", "server_per_n2_us"]))

    if not args.skip_e2e:
        result["end_to_end"] = end_to_end()
        print("\n## 4. Default experiment, secagg vs plain (seconds per round, best of 2)\n")
        print(table([result["end_to_end"]], ["plain_round_s", "secagg_round_s", "ratio", "plain_accuracy",
                                             "secagg_accuracy", "secagg_aggregation_s_per_round"]))
    result["share_recovery"] = share_recovery(100 if args.quick else 1000, repeats)
    print(f"\n## 5. Share recovery, n = {result['share_recovery']['n']} seeds of 32 bytes\n")
    print(table([result["share_recovery"]], ["n", "k", "threshold", "pycryptodome_one_at_a_time_s",
                                             "privfed_all_at_once_s", "speedup"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
