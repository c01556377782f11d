"""Read ``data.source`` into a :class:`~privfed.data.records.TextDataset` (texts or chats, optional labels,
natural groups)."""
from __future__ import annotations

import yaml

from privfed import assets
from privfed.config import DataConfig
from privfed.data.records import TextDataset
from privfed.errors import MissingAssetError


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


def load_data(data: DataConfig) -> TextDataset:
    """The examples ``data`` names (built-in datasets only, so far)."""
    if data.source == "bbc_news":
        return load_bbc_news()
    if data.source == "chatterbot":
        return load_chatterbot(data.languages)
    return load_fortunes()
