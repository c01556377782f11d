"""Regenerate the README's experiment tables: one sweep per config, tables and plots under experiments/results/.

Finished runs are reused (delete experiments/results/<name>/ to measure again); the tables (table_<x>.md) and one
plot per sweep (<name>.png) are the files kept in git.

    python experiments/make_tables.py            # every table (~35 min on 2 CPU cores)
    python experiments/make_tables.py bbc        # only table (a); chat: (b); instruct: (c)
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from privfed.config import load_config
from privfed.epsilon_sweep import sweep
from privfed.report.tables import markdown_table, summary_rows

HERE = Path(__file__).parent
TABLES = {
    "bbc": [("bbc_minilm_lora.yaml", [1, 3, 8, float("inf")])],
    "chat": [("chatterbot_smollm2_lora.yaml", [3, 8, float("inf")]),
             ("chatterbot_smollm2_prompt.yaml", [3, 8, float("inf")])],
    "instruct": [("chatterbot_smollm2_instruct.yaml", [8, float("inf")])],
}


def main(which: list[str]) -> None:
    for table in which or list(TABLES):
        runs = []
        for config_name, epsilons in TABLES[table]:
            cfg = load_config(HERE / config_name)
            runs += sweep(cfg, epsilons, HERE / "results" / cfg.name, progress=True)
            shutil.copyfile(HERE / "results" / cfg.name / "privacy_utility.png", HERE / "results" / f"{cfg.name}.png")
        text = markdown_table(summary_rows(runs))
        (HERE / "results" / f"table_{table}.md").write_text(text + "\n")
        print(f"\n## table {table}\n\n{text}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
