"""Read the offline text datasets into a :class:`TextDataset` (texts, optional labels, natural groups)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import yaml

from privfed import assets
from privfed.config import Dataset
from privfed.errors import MissingAssetError


@dataclass(frozen=True)
class TextDataset:
    """Raw examples. ``labels`` is None for causal-LM data; ``groups`` names each example's natural source."""

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    groups: tuple[str, ...]
    label_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> TextDataset:
        idx = [int(i) for i in indices]
        return TextDataset(
            texts=tuple(self.texts[i] for i in idx),
            labels=None if self.labels is None else tuple(self.labels[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
            label_names=self.label_names,
        )


def load_bbc_news() -> TextDataset:
    """BBC News: one folder per class, one article per file (title on the first line)."""
    root = assets.bbc_news_dir()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            text = path.read_bytes().decode("utf-8", errors="replace")
            texts.append(" ".join(text.split()))
            labels.append(label)
    return TextDataset(tuple(texts), tuple(labels), tuple(classes[y] for y in labels), tuple(classes))


def load_chatterbot(languages: tuple[str, ...]) -> TextDataset:
    """Chatterbot dialogues: each conversation becomes one example, grouped by ``language/topic``.

    With one language the natural groups are its topic files; with several, the languages themselves.
    """
    root = assets.chatterbot_dir()
    texts, groups = [], []
    for language in languages:
        folder = root / language
        if not folder.is_dir():
            available = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise MissingAssetError(f"chatterbot has no language {language!r}; available: {', '.join(available)}")
        for path in sorted(folder.glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for conversation in doc.get("conversations") or []:
                turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
                if len(turns) >= 2:
                    texts.append("\n".join(turns))
                    groups.append(language if len(languages) > 1 else path.stem)
    return TextDataset(tuple(texts), None, tuple(groups))


def load_fortunes() -> TextDataset:
    """Debian fortunes: each fortune is an example, grouped by its topic file."""
    root = assets.fortunes_dir()
    texts, groups = [], []
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name.startswith("."):
            continue
        for block in path.read_bytes().decode("utf-8", errors="replace").split("\n%\n"):
            block = block.strip().strip("%").strip()
            if 20 <= len(block) <= 1000:
                texts.append(block)
                groups.append(path.name)
    if not texts:
        raise MissingAssetError(f"{root} holds no fortunes: reinstall `apt-get install fortunes`")
    return TextDataset(tuple(texts), None, tuple(groups))


def load_dataset(dataset: Dataset, languages: tuple[str, ...] = ("english",)) -> TextDataset:
    if dataset is Dataset.BBC_NEWS:
        return load_bbc_news()
    if dataset is Dataset.CHATTERBOT:
        return load_chatterbot(languages)
    return load_fortunes()
