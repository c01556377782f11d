"""Paillier aggregation costs, measured in one run: privfed's packed, parallel Paillier vs per-element ``phe``.

For d = 100,000 and 1,000,000 parameters and n = 10 clients, on the same random updates (values in [-1, 1]):

* privfed: each client clips, rounds to 20-bit fixed point, packs (b + ceil(log2 n) + 1 = 25-bit slots), makes its
  obfuscators on the spot in a pool of one process per core (cold: nothing precomputed) and encrypts; the server
  multiplies the 10 clients' ciphertexts; one client decrypts the sum in the pool. "online" is what encryption costs
  once the obfuscators are ready (they are made while the client trains in a real run).
* per-element phe: ``public_key.encrypt(float)`` per value, ``EncryptedNumber + EncryptedNumber`` per value and
  client, ``private_key.decrypt`` per value, each timed on a sample of the same vector and scaled to d
  (encrypting 10 M values one by one would take days). phe uses gmpy2 here too.

Then the default experiment (``privfed run``) with the LoRA and the prompt regime, paillier vs plain: seconds and
accuracy (aim: paillier within 2x plain's time, same accuracy).

    python benchmarks/paillier.py [--quick] [--skip-e2e] [--key-bits 3072]

Aims (issue 4): >= 500x faster than per-element phe; a 1 M-parameter update encrypted in <= 60 s on 2 cores;
ciphertext bytes <= 10x the float32 size. Prints a table and, last, one JSON line with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import phe
from benchmark_table import table  # benchmarks/benchmark_table.py, beside this script

from privfed.secure.encoding import FixedPointEncoding
from privfed.secure.packing import SlotLayout
from privfed.secure.paillier import PaillierServer, PaillierWorkers, decrypt_sum, encrypt_packed, input_message
from privfed.secure.paillier_keys import PaillierKey

VALUE_BITS = 20
SESSION = os.urandom(16)


def privfed_round(key: PaillierKey, workers: PaillierWorkers, d: int, n: int, rng: np.random.Generator) -> dict:
    encoding = FixedPointEncoding(1.0, VALUE_BITS, 64)
    layout = SlotLayout.for_clients(VALUE_BITS, n, key.bits - 1)
    count = layout.plaintexts_for(d)
    updates = [rng.uniform(-1, 1, d) for _ in range(n)]
    server = PaillierServer(key.public(), layout, d, SESSION, 1)
    cold, online, sizes = [], [], []
    for cid, update in enumerate(updates):
        start = time.perf_counter()
        plaintexts = layout.pack(encoding.quantise(update)[0])
        packed = time.perf_counter()
        obfuscators = workers.take(count, progress=True)  # nothing queued: made now, across the pool
        ready = time.perf_counter()
        raw = input_message(key, layout, d, encrypt_packed(plaintexts, key, obfuscators), SESSION, 1, cid)
        done = time.perf_counter()
        cold.append(done - start)
        online.append((packed - start) + (done - ready))
        sizes.append(len(raw))
        server.receive(cid, raw)
    aggregate = server.seconds
    encrypted_sum = server.result()
    start = time.perf_counter()
    total, _ = decrypt_sum(encrypted_sum, key, layout, d, SESSION, 1, workers, progress=True)
    decrypt = time.perf_counter() - start
    error = np.max(np.abs(total * encoding.step - np.sum(updates, axis=0)))
    assert error <= n * encoding.step, f"the decrypted sum is off by {error}"
    return {"d": d, "n": n, "key_bits": key.bits, "slots_per_ciphertext": layout.slots, "slot_bits": layout.slot_bits,
            "ciphertexts_per_client": count, "encrypt_s_per_client": statistics.mean(cold),
            "online_encrypt_s_per_client": statistics.mean(online), "aggregate_s": aggregate, "decrypt_s": decrypt,
            "total_s": sum(cold) + aggregate + decrypt, "bytes_per_client": statistics.mean(sizes),
            "bytes_vs_float32": statistics.mean(sizes) / (4 * d), "max_abs_error": float(error),
            "processes": workers.processes}


def phe_per_element(key: PaillierKey, sample: np.ndarray, n: int) -> dict:
    """Seconds per value for phe's encrypt / add / decrypt, measured on ``sample``, and bytes per ciphertext."""
    public, private = key.public_key(), key.private_key()
    start = time.perf_counter()
    encrypted = [public.encrypt(float(v)) for v in sample]
    encrypt = (time.perf_counter() - start) / len(sample)
    others = [public.encrypt(float(v)) for v in sample[: max(1, len(sample) // 4)]]
    start = time.perf_counter()
    adds = 0
    for _ in range(20):
        for a, b in zip(encrypted, others):
            _ = a + b
            adds += 1
    add = (time.perf_counter() - start) / adds
    start = time.perf_counter()
    decrypted = [private.decrypt(c) for c in encrypted]
    decrypt = (time.perf_counter() - start) / len(sample)
    assert np.allclose(decrypted, sample)
    width = (2 * key.bits + 7) // 8  # the ciphertext alone; phe's exponent would travel beside it
    return {"sample": len(sample), "encrypt_s_per_value": encrypt, "add_s_per_value": add,
            "decrypt_s_per_value": decrypt, "bytes_per_value": width, "n": n}


def scaled_baseline(per: dict, d: int, n: int) -> dict:
    encrypt = per["encrypt_s_per_value"] * d
    aggregate = per["add_s_per_value"] * d * (n - 1)
    decrypt = per["decrypt_s_per_value"] * d
    return {"d": d, "encrypt_s_per_client": encrypt, "aggregate_s": aggregate, "decrypt_s": decrypt,
            "total_s": n * encrypt + aggregate + decrypt, "bytes_per_client": per["bytes_per_value"] * d,
            "bytes_vs_float32": per["bytes_per_value"] / 4}


def end_to_end() -> list[dict]:
    from privfed.config import load_config
    from privfed.engines.inprocess import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for regime in ("lora", "prompt"):
            row: dict = {"regime": regime}
            for method in ("plain", "paillier"):
                res = run(load_config(None, [f"aggregation={method}", f"model.regime={regime}"]),
                          Path(tmp) / f"{regime}-{method}", overwrite=True, progress=False)
                row[f"{method}_s"] = res["seconds"]
                row[f"{method}_accuracy"] = res["final"]["eval_accuracy"]
                if method == "paillier":
                    details = [r["aggregation"] for r in res["rounds"]]
                    row["paillier_wait_s_per_client"] = statistics.mean(d["obfuscator_wait_seconds"] for d in details)
                    row["paillier_decrypt_s"] = statistics.mean(d["decrypt_seconds"] for d in details)
                    row["mb_up_per_client"] = res["rounds"][0]["bytes_up_per_client"] / 1e6
            row["ratio"] = row["paillier_s"] / row["plain_s"]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 100,000 only, 3 clients (a smoke test, ~1 min)")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the four default experiments (~8 min)")
    parser.add_argument("--key-bits", type=int, default=3072, choices=(2048, 3072, 4096))
    parser.add_argument("--sample", type=int, default=100, help="values per phe measurement (default 100)")
    args = parser.parse_args()
    sizes, n = ((100_000,), 3) if args.quick else ((100_000, 1_000_000), 10)
    rng = np.random.default_rng(0)
    key = PaillierKey.generate(args.key_bits)
    workers = PaillierWorkers(key, os.cpu_count() or 1)
    result: dict = {"key_bits": key.bits, "cores": os.cpu_count(), "phe": phe.__version__}
    try:
        workers.take(workers.processes)  # start the pool outside the timings
        result["privfed"] = [privfed_round(key, workers, d, n, rng) for d in sizes]
    finally:
        workers.close()
    result["phe_per_element"] = phe_per_element(key, rng.uniform(-1, 1, args.sample), n)
    result["phe_scaled"] = [scaled_baseline(result["phe_per_element"], d, n) for d in sizes]
    result["speedup"] = [{"d": d, "total": base["total_s"] / ours["total_s"],
                          "encrypt_per_client": base["encrypt_s_per_client"] / ours["encrypt_s_per_client"],
                          "decrypt": base["decrypt_s"] / ours["decrypt_s"],
                          "bytes": base["bytes_per_client"] / ours["bytes_per_client"]}
                         for d, ours, base in zip(sizes, result["privfed"], result["phe_scaled"])]

    print(f"\n## privfed packed Paillier ({key.bits}-bit key, {n} clients, {workers.processes} processes)\n")
    print(table(result["privfed"], ["d", "slots_per_ciphertext", "ciphertexts_per_client", "encrypt_s_per_client",
                                    "online_encrypt_s_per_client", "aggregate_s", "decrypt_s", "total_s",
                                    "bytes_per_client", "bytes_vs_float32"]))
    print(f"\n## per-element phe {phe.__version__}, measured on {args.sample} values and scaled\n")
    print(table(result["phe_scaled"], ["d", "encrypt_s_per_client", "aggregate_s", "decrypt_s", "total_s",
                                       "bytes_per_client", "bytes_vs_float32"]))
    print("\n## privfed speed-up over per-element phe (same key, same vectors)\n")
    print(table(result["speedup"], ["d", "total", "encrypt_per_client", "decrypt", "bytes"]))
    if not args.skip_e2e:
        result["end_to_end"] = end_to_end()
        print("\n## The default experiment (3 rounds, 5 clients), paillier vs plain\n")
        print(table(result["end_to_end"], ["regime", "plain_s", "paillier_s", "ratio", "plain_accuracy",
                                           "paillier_accuracy", "paillier_wait_s_per_client", "paillier_decrypt_s",
                                           "mb_up_per_client"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
