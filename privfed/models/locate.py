"""Find the local folder a non-built-in ``model.source`` names, and check it holds a model, without any network.

Resolution order (after the built-in names, which :mod:`privfed.models.sources` handles first):

1. an existing path: it must be a folder (a Hugging Face ``save_pretrained`` folder);
2. a model name (``org/name``) already in the local Hugging Face cache: its snapshot folder, found by
   huggingface_hub's ``snapshot_download(..., local_files_only=True)``, which only reads the cache (the cache
   location follows ``HF_HUB_CACHE`` / ``HF_HOME`` as huggingface_hub reads them).

Anything else is a :class:`~privfed.errors.ConfigError` that says what was looked for.
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

from privfed.errors import ConfigError

# transformers' weight file names (transformers.utils SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME,
# WEIGHTS_INDEX_NAME): one of them must be present unless the model is built from its config alone
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def model_folder(source: str, builtin_names: list[str]) -> Path:
    """The folder ``source`` names: an existing local folder, else a cached Hugging Face model's snapshot."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError("model.source", f"{path} is a file; a local model is a Hugging Face folder "
                                              "(config.json, weights, tokenizer files)")
        return path
    try:
        return Path(snapshot_download(repo_id=source, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError, IncompleteSnapshotError):
        pass
    raise ConfigError("model.source", f"{source!r} is not a built-in model ({', '.join(builtin_names)}), not an "
                                      f"existing folder, and not a model in the Hugging Face cache "
                                      f"{constants.HF_HUB_CACHE} (nothing is downloaded)")


def check_folder(folder: Path, source: str, needs_weights: bool) -> None:
    """Refuse a folder without config.json, or without weights when the model is not built from scratch."""
    if not (folder / "config.json").is_file():
        raise ConfigError("model.source", f"{source}: {folder} has no config.json, so it is not a Hugging Face "
                                          "model folder")
    if needs_weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError("model.source", f"{source}: {folder} has no weights ({', '.join(WEIGHT_FILES)}); add "
                                          "them, or train from scratch with model.regime=pretrain")
