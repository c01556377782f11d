"""Audit the auditor: the one-run audit on an intact DP-SGD mechanism (20 seeds at ε = 1, 3, 8: no violation
allowed, ε_lb/ε reported) and on four broken ones at ε = 1 (each must be flagged), written to
experiments/results/audit_the_auditor.md.

The mechanism is client 0's DP-SGD on a small random model (tiny BERT + LoRA, 4,421 trainable values; 20 rounds of
one SGD step, q = 0.2), audited with 4,000 Dirac canaries; see privfed.audit.repeat.

    python experiments/audit_the_auditor.py            # ~10 min on 2 CPU cores
    python experiments/audit_the_auditor.py --seeds 5  # a quicker look
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from privfed.audit.repeat import repeated_one_run
from privfed.audit.settings import MechanismFault
from privfed.config import load_config
from privfed.federation.setup import build_federation

HERE = Path(__file__).parent
MECHANISM = ["model.source=tiny_bert", "model.regime=lora", "data.max_length=32", "data.max_examples=120",
             "data.eval_examples=8", "partition.num_clients=2", "partition.alpha=1.0", "privacy.mode=target_epsilon",
             "training.optimizer=sgd", "training.lr=0.5", "training.rounds=20", "training.local_steps=1",
             "training.batch_size=12", "seed=1"]
CANARIES = 4000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--fault-seeds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [(f"Client 0's DP-SGD audited with m = {CANARIES} Dirac canaries (Steinke et al. bound, 95 %, "
              f"δ = 1e-5); config: `{' '.join(MECHANISM)}`."), "",
             ("| mechanism | claimed ε | seeds | violations | ε_lb mean | ε_lb max | ε_lb/ε mean | ε_lb/ε max | "
              "ε_lb f-DP mean |"), "|---|---|---|---|---|---|---|---|---|"]
    cases = [(MechanismFault.NONE, eps, args.seeds) for eps in (1.0, 3.0, 8.0)]
    cases += [(fault, 1.0, args.fault_seeds) for fault in MechanismFault if fault is not MechanismFault.NONE]
    for fault, epsilon, seeds in cases:
        fed = build_federation(load_config(overrides=[*MECHANISM, f"privacy.epsilon={epsilon}"]))
        found = repeated_one_run(fed, range(seeds), canaries=CANARIES, fault=fault, progress=True)
        lb = np.array([f.bound.epsilon_steinke for f in found])
        claimed = np.array([f.claimed_epsilon for f in found])
        fdp = np.array([f.bound.epsilon_fdp for f in found])
        name = "intact" if fault is MechanismFault.NONE else f"fault: {fault.value}"
        lines.append(f"| {name} | {claimed.mean():.3f} | {seeds} | {sum(f.violation for f in found)} | "
                     f"{lb.mean():.3f} | {lb.max():.3f} | {(lb / claimed).mean():.3f} | {(lb / claimed).max():.3f} | "
                     f"{fdp.mean():.3f} |")
        print(lines[-1], flush=True)
    lines += ["", (f"{time.perf_counter() - started:.0f} s on this machine (`python experiments/audit_the_auditor.py "
                   f"--seeds {args.seeds} --fault-seeds {args.fault_seeds}`).")]
    out = HERE / "results" / "audit_the_auditor.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
