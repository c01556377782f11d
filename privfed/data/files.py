"""Read ``data.source`` (or each ``data.clients[i].path``) from local files with Hugging Face ``datasets``.

A path may be

* a ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file: one table, natural group = the file's name without
  extension;
* a folder of such files, searched recursively (hidden files and folders skipped, empty files too): one table per
  file, natural group = the file's path relative to the folder, without extension (``org_a/notes``);
* a folder of ``.txt`` files (or one ``.txt`` file), cut by ``data.text_unit``: ``file`` makes each file one
  example, grouped by the file's parent folder relative to the source (``.`` for files at its top: a folder per
  organisation, like BBC News' folder per topic); ``line`` makes each non-empty line one example, grouped by its
  file (relative path without extension, as for data files). Each example is stripped of surrounding whitespace;
* a folder written by ``datasets``' ``save_to_disk``: a Dataset, or a DatasetDict whose splits are read one after
  another in the dict's order (privfed draws its own held-out split, so the saved splits are simply pooled);
  natural group = the folder's name.

``data.client_column`` replaces these groups by that column's values; with ``data.clients`` every example of a
client's path is grouped under the client's id. Labels are indexed once every table is read, so the label names
are the union over all files and clients.

Nothing is left behind: ``datasets`` prepares each file in a temporary cache folder that is deleted as soon as the
rows are in memory, so neither the data folder nor a persistent cache ever holds a copy of (possibly private) data.
Only packaged ``datasets`` builders read local files, so loading works with ``HF_DATASETS_OFFLINE=1`` /
``HF_HUB_OFFLINE=1`` and never touches the network.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from privfed.config import DataConfig, RecordFormat, TextUnit
from privfed.data.catalog import BUILTIN_DATASETS
from privfed.data.columns import Examples, Table, extract, index_labels
from privfed.data.records import TextDataset
from privfed.errors import ConfigError

log = logging.getLogger(__name__)

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # suffix -> datasets builder
BUILDER_OPTIONS = {"csv": {"keep_default_na": False}}  # an empty cell is empty text, and "NA" or "None" is text
TEXT_SUFFIX = ".txt"
SAVED_MARKERS = (datasets.config.DATASETDICT_JSON_FILENAME, datasets.config.DATASET_STATE_JSON_FILENAME)
SUPPORTED = (", ".join([*BUILDERS, TEXT_SUFFIX]) + " files, or a folder written by datasets' save_to_disk")


def load_files(data: DataConfig) -> TextDataset:
    """The examples of ``data.source``, or of every ``data.clients`` path (each client one natural group)."""
    with _hf_cache() as cache:
        if data.clients:
            gathered = Examples()
            for i, client in enumerate(data.clients):
                key = f"data.clients[{i}].path"
                own = _read(client.path, key, data, cache)
                if not own.examples:
                    raise ConfigError(key, f"client {client.id!r} has no examples left in {client.path} "
                                           f"(rows dropped: {_dropped_text(own)})")
                own.groups = [client.id] * len(own.examples)
                gathered.extend(own)
            where = "data.clients"
        else:
            gathered = _read(data.source, "data.source", data, cache)
            where = data.source
    if not gathered.examples:
        raise ConfigError("data.source", f"{data.source} holds no examples (rows dropped: "
                                           f"{_dropped_text(gathered)})")
    if gathered.dropped:
        log.warning("%s: dropped %d of %d rows (%s)", where, gathered.dropped.total(),
                    gathered.dropped.total() + len(gathered.examples), _dropped_text(gathered))
    labels, names = index_labels(gathered.labels) if data.label_column else (None, ())
    if data.label_column and len(names) < 2:
        raise ConfigError("data.label_column", f"column {data.label_column!r} holds one class ({names[0]!r}); "
                                               "classification needs at least two")
    return TextDataset(tuple(gathered.examples), labels, tuple(gathered.groups), names,  # type: ignore[arg-type]
                       chat=data.records is not RecordFormat.TEXT)


def _read(text: str, key: str, data: DataConfig, cache: str) -> Examples:
    """The examples of one configured path (``key`` names it in errors)."""
    out = Examples()
    for table in _tables(_existing(text, key), key, data, cache):
        out.extend(extract(table, data))
    return out


def _dropped_text(examples: Examples) -> str:
    """``3 with no text, 1 with no label``; ``none`` when no row was dropped."""
    return ", ".join(f"{n} with {reason}" for reason, n in sorted(examples.dropped.items())) or "none"


def _existing(text: str, key: str) -> Path:
    """``text`` as a path (``~`` expanded, relative to the working directory), which must exist."""
    path = Path(text).expanduser()
    if not path.exists():
        builtins = f"; built-in datasets: {', '.join(BUILTIN_DATASETS)}" if key == "data.source" else ""
        raise ConfigError(key, f"no such file or folder: {text}{builtins}")
    return path


def _tables(path: Path, key: str, data: DataConfig, cache: str) -> Iterator[Table]:
    """The tables at ``path``, in a stable order (files sorted by relative path)."""
    if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
        yield from _saved_tables(path, key)
        return
    root, files = (path, _files_under(path, key)) if path.is_dir() else (path.parent, [path])
    suffixes = {f.suffix.lower() for f in files}
    unsupported = sorted(suffixes - {*BUILDERS, TEXT_SUFFIX})
    if unsupported:
        example = next(f for f in files if f.suffix.lower() == unsupported[0])
        raise ConfigError(key, f"unsupported file type {unsupported[0] or '(none)'!r} ({example}); supported: "
                               + SUPPORTED)
    if TEXT_SUFFIX in suffixes:
        if len(suffixes) > 1:
            raise ConfigError(key, f"{path} mixes .txt files with data files ({', '.join(sorted(suffixes))}); "
                                   "keep each kind in its own folder")
        yield from _text_tables(root, files, data)
        return
    for file in files:
        if file.stat().st_size:  # an empty file holds no rows (datasets' json builder cannot even start on one)
            yield Table(file.relative_to(root).with_suffix("").as_posix(), str(file), _read_file(file, key, cache))


def _files_under(folder: Path, key: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ConfigError(key, f"{folder} is an empty folder; expected {SUPPORTED}")
    return files


def _read_file(file: Path, key: str, cache: str) -> dict[str, list]:
    """All columns of one data file, read by its ``datasets`` builder; a parse failure is a one-line ConfigError."""
    builder = BUILDERS[file.suffix.lower()]
    options = dict(BUILDER_OPTIONS.get(builder, {}))
    if builder == "csv":  # a CSV has no types: every cell is text ("007" stays "007"; labels compare as text)
        options["features"] = datasets.Features({c: datasets.Value("string") for c in _csv_header(file)})
    try:
        table = datasets.load_dataset(builder, data_files=str(file), split="train", cache_dir=cache,
                                      keep_in_memory=True, **options)
    except (datasets.exceptions.DatasetsError, pa.ArrowException, ValueError) as err:
        raise ConfigError(key, f"cannot parse {file}: {_one_line(err)}") from None
    return table.to_dict()


def _csv_header(file: Path) -> list[str]:
    """The column names on a CSV file's first line."""
    with file.open(newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def _saved_tables(folder: Path, key: str) -> Iterator[Table]:
    try:
        saved = datasets.load_from_disk(str(folder), keep_in_memory=True)
    except (datasets.exceptions.DatasetsError, pa.ArrowException, ValueError, FileNotFoundError) as err:
        raise ConfigError(key, f"cannot read the saved dataset {folder}: {_one_line(err)}") from None
    splits = saved.items() if isinstance(saved, datasets.DatasetDict) else [("", saved)]
    for split, table in splits:
        yield Table(folder.name, f"{folder} split {split}" if split else str(folder), table.to_dict())


def _text_tables(root: Path, files: list[Path], data: DataConfig) -> Iterator[Table]:
    """.txt files as tables of one text column (``data.text_column``), grouped by the ``data.text_unit`` rule."""
    for key in ("label_column", "client_column"):
        if getattr(data, key):
            raise ConfigError(f"data.{key}", f".txt files have no columns; leave data.{key} empty (groups follow "
                                             "the folders and files)")
    if data.records is not RecordFormat.TEXT:
        raise ConfigError("data.records", f".txt files hold plain text: use records text, not {data.records.value}")
    for file in files:
        text = file.read_bytes().decode("utf-8", errors="replace")
        relative = file.relative_to(root)
        if data.text_unit is TextUnit.FILE:
            yield Table(relative.parent.as_posix(), str(file), {data.text_column: [text.strip()]})
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            yield Table(relative.with_suffix("").as_posix(), str(file), {data.text_column: lines})


def _one_line(err: BaseException) -> str:
    """The parser's own message: the first cause that is not ``datasets``' generic wrapper, cut to one line."""
    while isinstance(err, datasets.exceptions.DatasetsError) and (err.__cause__ or err.__context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:240]


@contextlib.contextmanager
def _hf_cache() -> Iterator[str]:
    """A throw-away ``datasets`` cache folder. While privfed reads, ``datasets``' progress bars and log messages are
    silenced (a parse failure becomes one ConfigError line, not that line plus the library's own); both are
    restored after."""
    bars = not datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    if bars:
        datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        with tempfile.TemporaryDirectory(prefix="privfed-datasets-") as cache:
            yield cache
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
