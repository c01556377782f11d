"""Read ``data.source`` into a :class:`~privfed.data.records.TextDataset` (texts or chats, optional labels,
natural groups): a built-in dataset through its entry in :data:`BUILTIN_LOADERS` (keyed exactly like
:data:`~privfed.data.catalog.BUILTIN_DATASETS`), anything else from local files (:mod:`privfed.data.files`)."""
from __future__ import annotations

from collections.abc import Callable

import yaml

from privfed import assets
from privfed.config import DataConfig, RecordFormat
from privfed.data.files import load_files
from privfed.data.records import Chat, Message, TextDataset
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


def load_chatterbot(languages: tuple[str, ...], records: RecordFormat = RecordFormat.TEXT) -> TextDataset:
    """Chatterbot dialogues: each conversation of at least two turns becomes one example, grouped by topic.

    ``records`` text joins the turns by newlines; chat makes them alternating user and assistant turns, starting
    with the user. With one language the natural groups are its topic files; with several, the languages themselves.
    """
    root = assets.chatterbot_dir()
    examples: list[str | Chat] = []
    groups = []
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
                    examples.append(_alternating(turns) if records is RecordFormat.CHAT else "\n".join(turns))
                    groups.append(language if len(languages) > 1 else path.stem)
    return TextDataset(tuple(examples), None, tuple(groups), chat=records is RecordFormat.CHAT)  # type: ignore[arg-type]


def _alternating(turns: list[str]) -> Chat:
    return tuple(Message("user" if i % 2 == 0 else "assistant", turn) for i, turn in enumerate(turns))


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


BUILTIN_LOADERS: dict[str, Callable[[DataConfig], TextDataset]] = {
    "bbc_news": lambda data: load_bbc_news(),
    "chatterbot": lambda data: load_chatterbot(data.languages, data.records),
    "fortunes": lambda data: load_fortunes(),
}


def load_data(data: DataConfig) -> TextDataset:
    """The examples ``data`` names: a built-in dataset, or local files (``data.source`` a path, or ``data.clients``)."""
    loader = BUILTIN_LOADERS.get(data.source)
    return loader(data) if loader is not None else load_files(data)
