"""Write privfed's built-in data as the kind of files an organisation brings, for the README's walkthrough.

    python experiments/write_example_files.py runs/byo

writes

* ``runs/byo/news.csv``: BBC News as a CSV with columns ``text``, ``topic`` (the label) and ``organisation`` (one
  of three "hospitals", drawn at random per article): classification with natural clients by column;
* ``runs/byo/dialogues/<topic>.jsonl``: chatterbot's English dialogues as chat records (a ``messages`` column of
  ``{role, content}`` turns, the user first), one file per topic: instruction tuning with natural clients by file;

and prints two local model folders to try them with: MiniLM's (inside its PyPI package) and SmolLM2's float32
conversion (made on first use in privfed's cache).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from privfed.config import DataConfig, RecordFormat
from privfed.data.sources import load_data

ORGANISATIONS = ("hospital_a", "hospital_b", "hospital_c")


def write_news(path: Path, seed: int) -> int:
    news = load_data(DataConfig(source="bbc_news"))
    owner = np.random.default_rng(seed).choice(len(ORGANISATIONS), size=len(news))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "topic", "organisation"])
        for text, label, org in zip(news.examples, news.labels or (), owner, strict=True):
            writer.writerow([text, news.label_names[label], ORGANISATIONS[org]])
    return len(news)


def write_dialogues(folder: Path) -> int:
    chats = load_data(DataConfig(source="chatterbot", records=RecordFormat.CHAT))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    for chat, topic in zip(chats.examples, chats.groups, strict=True):
        with (folder / f"{topic}.jsonl").open("a", encoding="utf-8") as handle:
            messages = [{"role": m.role, "content": m.content} for m in chat]  # type: ignore[union-attr]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return len(chats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_news(args.out / 'news.csv', args.seed)} articles to {args.out / 'news.csv'}")
    print(f"wrote {write_dialogues(args.out / 'dialogues')} dialogues to {args.out / 'dialogues'}/")
    from privfed import assets
    from privfed.models.sources import smollm2_dir

    print(f"a local classifier folder:  {assets.minilm_dir()}")
    print(f"a local causal LM folder:   {smollm2_dir()}")


if __name__ == "__main__":
    main()
