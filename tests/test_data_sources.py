"""data.source from local files (every format, records kind, label and group rule, every user error), the built-in
datasets as entries of the same registry, and two end-to-end runs on local files. Tiny fixtures in tmp_path; the
network is blocked throughout, so a loader that reached for a hub would fail here."""
from __future__ import annotations

import json
import socket
import tempfile

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import privfed
from privfed.config import (
    ClientData,
    DataConfig,
    Partition,
    PartitionConfig,
    RecordFormat,
    TextUnit,
    load_config,
)
from privfed.data.catalog import BUILTIN_DATASETS
from privfed.data.partition import partition
from privfed.data.records import Message
from privfed.data.sources import BUILTIN_LOADERS, load_data
from privfed.errors import ConfigError

ROWS = [{"text": "the first text", "topic": "b", "org": "x"},
        {"text": "second, with a comma", "topic": "a", "org": "y"},
        {"text": "third\nover two lines", "topic": "b", "org": "x"}]
TEXTS = tuple(r["text"] for r in ROWS)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No socket may connect, and datasets believes itself offline (as under HF_DATASETS_OFFLINE=1)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def source(path, **fields) -> DataConfig:
    return DataConfig(source=str(path), **fields)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    pacsv.write_csv(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_each_file_format_round_trips(tmp_path, suffix, monkeypatch):
    temp = tmp_path / "temp"  # this test's own temporary directory: other tests (pytest -n) load files meanwhile
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif suffix == ".csv":
        write_csv(path, ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    before = sorted(p.name for p in tmp_path.iterdir())
    data = load_data(source(path))
    assert data.examples == TEXTS and data.labels is None and not data.chat
    assert data.groups == ("corpus",) * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no cache files beside the data
    assert not list(temp.iterdir())  # the throw-away datasets cache is gone


def test_folder_of_files_groups_by_relative_path(tmp_path):
    write_jsonl(tmp_path / "data" / "org_a" / "notes.jsonl", ROWS[:2])
    write_csv(tmp_path / "data" / "org_b.csv", ROWS[2:])
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), tmp_path / "data" / "org_a" / "more.parquet")
    (tmp_path / "data" / "empty.jsonl").write_text("")
    (tmp_path / "data" / ".hidden").mkdir()
    (tmp_path / "data" / ".hidden" / "skip.xlsx").write_text("hidden files are skipped")
    data = load_data(source(tmp_path / "data"))
    assert data.examples == (TEXTS[0], TEXTS[0], TEXTS[1], TEXTS[2])  # files sorted by relative path
    assert data.groups == ("org_a/more", "org_a/notes", "org_a/notes", "org_b")
    shards = partition(data, PartitionConfig(scheme=Partition.NATURAL, num_clients=0), np.random.default_rng(0))
    assert sorted(sorted({data.groups[i] for i in s}) for s in shards) == [["org_a/more"], ["org_a/notes"],
                                                                             ["org_b"]]


def test_txt_folder_one_example_per_file_grouped_by_parent_folder(tmp_path):
    (tmp_path / "docs" / "org_a").mkdir(parents=True)
    (tmp_path / "docs" / "org_a" / "1.txt").write_text("  first document\nits second line\n")
    (tmp_path / "docs" / "org_a" / "2.txt").write_text("second document")
    (tmp_path / "docs" / "top.txt").write_text("at the top\n")
    (tmp_path / "docs" / "empty.txt").write_text("\n \n")
    data = load_data(source(tmp_path / "docs", text_unit=TextUnit.FILE))
    assert data.examples == ("first document\nits second line", "second document", "at the top")
    assert data.groups == ("org_a", "org_a", ".")


def test_txt_folder_one_example_per_line_grouped_by_file(tmp_path):
    (tmp_path / "docs" / "org_a").mkdir(parents=True)
    (tmp_path / "docs" / "org_a" / "notes.txt").write_text("line one\n\n  line two  \n")
    (tmp_path / "docs" / "b.txt").write_text("only line")
    data = load_data(source(tmp_path / "docs", text_unit=TextUnit.LINE))
    assert data.examples == ("only line", "line one", "line two")
    assert data.groups == ("b", "org_a/notes", "org_a/notes")


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    data = load_data(source(tmp_path / "saved"))
    assert data.examples == TEXTS and data.groups == ("saved",) * 3
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                                   "test": datasets.Dataset.from_list(ROWS[2:])})
    splits.save_to_disk(str(tmp_path / "splits"))
    data = load_data(source(tmp_path / "splits", label_column="topic"))
    assert data.examples == TEXTS and data.groups == ("splits",) * 3  # splits pooled in the dict's order
    assert data.label_names == ("a", "b") and data.labels == (1, 0, 1)


# ---------------------------------------------------------------- records, labels, groups


def test_prompt_response_rows_become_chats_with_an_optional_system_turn(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"q": "What is DP?", "a": "A privacy guarantee."},
                                                  {"q": "", "a": "dropped: no prompt"},
                                                  {"q": "Hi", "a": None}])
    data = load_data(source(path, records=RecordFormat.PROMPT_RESPONSE, prompt_column="q", response_column="a"))
    assert data.chat and data.examples == ((Message("user", "What is DP?"),
                                            Message("assistant", "A privacy guarantee.")),)
    data = load_data(source(path, records=RecordFormat.PROMPT_RESPONSE, prompt_column="q", response_column="a",
                            system_prompt="Be brief."))
    assert [m.role for m in data.examples[0]] == ["system", "user", "assistant"]
    assert data.examples[0][0].content == "Be brief."


def test_chat_rows_keep_their_messages(tmp_path):
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}]
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat}, {"messages": []}, {"messages": None}])
    data = load_data(source(path, records=RecordFormat.CHAT))
    assert data.chat and data.examples == (tuple(Message(m["role"], m["content"]) for m in chat),)


def test_csv_cells_are_text_even_when_they_look_numeric(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("text,label\n123,10\n456,2\n007,10\n")
    data = load_data(DataConfig(source=str(path), label_column="label"))
    assert data.examples == ("123", "456", "007") and data.label_names == ("2", "10") and data.labels == (1, 0, 1)


def test_label_names_sorted_numerically_when_integers(tmp_path):
    rows = [{"text": f"t{i}", "y": y} for i, y in enumerate([10, 9, 10, 100])]
    data = load_data(source(write_csv(tmp_path / "num.csv", rows), label_column="y"))
    assert data.label_names == ("9", "10", "100") and data.labels == (1, 0, 1, 2)
    rows = [{"text": f"t{i}", "y": y} for i, y in enumerate(["sport", "Tech", "sport", "arts"])]
    data = load_data(source(write_jsonl(tmp_path / "words.jsonl", rows), label_column="y"))
    assert data.label_names == ("Tech", "arts", "sport") and data.labels == (2, 0, 2, 1)


def test_rows_without_text_or_label_are_dropped_and_counted(tmp_path, caplog):
    rows = [{"text": "kept", "y": "a"}, {"text": "", "y": "a"}, {"text": "  ", "y": "b"}, {"text": None, "y": "b"},
            {"text": "no label", "y": None}, {"text": "also kept", "y": "b"}]
    with caplog.at_level("WARNING"):
        data = load_data(source(write_jsonl(tmp_path / "d.jsonl", rows), label_column="y"))
    assert data.examples == ("kept", "also kept") and data.labels == (0, 1)
    assert "dropped 4 of 6 rows" in caplog.text and "3 with no text" in caplog.text and "1 with no label" in caplog.text


def test_client_column_names_the_natural_groups(tmp_path):
    data = load_data(source(write_jsonl(tmp_path / "d.jsonl", ROWS), client_column="org"))
    assert data.groups == ("x", "y", "x")
    shards = partition(data, PartitionConfig(scheme=Partition.NATURAL, num_clients=0), np.random.default_rng(0))
    assert sorted(sorted(s.tolist()) for s in shards) == [[0, 2], [1]]


def test_data_clients_each_one_group_and_label_names_are_the_union(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a1", "topic": "sport"}, {"text": "a2", "topic": "arts"}])
    write_jsonl(tmp_path / "b" / "part.jsonl", [{"text": "b1", "topic": "tech"}])
    data = load_data(DataConfig(source="", label_column="topic", clients=(
        ClientData("hospital", str(tmp_path / "a.jsonl")), ClientData("clinic", str(tmp_path / "b")))))
    assert data.examples == ("a1", "a2", "b1") and data.groups == ("hospital", "hospital", "clinic")
    assert data.label_names == ("arts", "sport", "tech") and data.labels == (1, 0, 2)


def test_data_clients_are_numbered_in_config_order_and_need_training_examples(tmp_path):
    from privfed.federation.setup import build_federation

    for name, n in (("zeta", 12), ("alpha", 6), ("mid", 1)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name} note {i}"} for i in range(n)])
    clients = [{"id": name, "path": str(tmp_path / f"{name}.jsonl")} for name in ("zeta", "alpha")]
    base = {"model": {"source": "tiny_llama"}, "partition": {"scheme": "natural", "num_clients": 0},
            "data": {"clients": clients, "max_length": 16, "test_fraction": 0.25}, "evaluation": {"generations": 0}}
    fed = build_federation(privfed.from_dict(base))  # data.clients alone: data.source is implied empty
    assert [next(iter(p["groups"])) for p in fed.partition_summary] == ["zeta", "alpha"]  # not sorted, not by size
    lonely = {**base, "data": {**base["data"], "clients": [*clients, {"id": "mid", "path": str(tmp_path / "mid.jsonl")}],
                               "test_fraction": 0.6}}
    with pytest.raises(ConfigError) as err:
        build_federation(privfed.from_dict(lonely))
    assert err.value.key == "data.clients[2].path" and "'mid'" in str(err.value)


# ---------------------------------------------------------------- errors a user meets


def _error(data: DataConfig) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_data(data)
    assert "\n" not in str(info.value)
    return info.value


def test_missing_paths(tmp_path):
    err = _error(source(tmp_path / "nope.jsonl"))
    assert err.key == "data.source" and "no such file or folder" in err.problem and "bbc_news, chatterbot" in err.problem
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    err = _error(DataConfig(source="", clients=(ClientData("a", str(tmp_path / "a.jsonl")),
                                                ClientData("b", str(tmp_path / "missing")))))
    assert err.key == "data.clients[1].path" and "missing" in err.problem


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "sheet.xlsx").write_text("x")
    err = _error(source(tmp_path / "sheet.xlsx"))
    assert err.key == "data.source" and "'.xlsx'" in err.problem and ".jsonl, .json, .csv, .parquet, .txt" in err.problem


def test_empty_folder_and_mixed_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    err = _error(source(tmp_path / "empty"))
    assert err.key == "data.source" and "empty folder" in err.problem
    write_jsonl(tmp_path / "mixed" / "a.jsonl", ROWS)
    (tmp_path / "mixed" / "b.txt").write_text("text")
    assert "mixes .txt files with data files" in _error(source(tmp_path / "mixed")).problem


def test_missing_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    err = _error(source(path, text_column="body"))
    assert err.key == "data.text_column" and "'body'" in err.problem and "text, topic, org" in err.problem
    assert _error(source(path, label_column="label")).key == "data.label_column"
    assert _error(source(path, records=RecordFormat.PROMPT_RESPONSE, prompt_column="text")).key == \
        "data.response_column"


def test_empty_client_and_empty_source(tmp_path):
    write_jsonl(tmp_path / "full.jsonl", ROWS)
    write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": None}])
    err = _error(DataConfig(source="", clients=(ClientData("a", str(tmp_path / "full.jsonl")),
                                                ClientData("b", str(tmp_path / "blank.jsonl")))))
    assert err.key == "data.clients[1].path" and "'b' has no examples left" in err.problem
    assert "2 with no text" in err.problem
    err = _error(source(tmp_path / "blank.jsonl"))
    assert err.key == "data.source" and "no examples" in err.problem


def test_label_column_with_one_class(tmp_path):
    err = _error(source(write_jsonl(tmp_path / "d.jsonl", ROWS[:1]), label_column="topic"))
    assert err.key == "data.label_column" and "one class ('b')" in err.problem


@pytest.mark.parametrize("messages, fragment", [
    ([{"role": "user", "content": "only a question"}], "row 2: no assistant turn"),
    ([{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}], "row 2: message 1"),
    ([{"role": "assistant", "content": None}], "row 2: message 1"),
])
def test_malformed_chat_messages_name_the_row(tmp_path, messages, fragment):
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": good}, {"messages": messages}])
    err = _error(source(path, records=RecordFormat.CHAT))
    assert err.key == "data.messages_column" and fragment in err.problem and "c.jsonl" in err.problem


def test_text_that_is_not_text_names_the_row(tmp_path):
    err = _error(source(write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, {"text": 7}])))
    assert err.key == "data.text_column" and "row 2" in err.problem and "int" in err.problem


@pytest.mark.parametrize("name, content, fragment", [
    ("bad.jsonl", '{"text": "a"}\n{"text": broken\n', "JSON parse error"),
    ("bad.csv", 'text,y\n"unclosed,1\n', "EOF inside string"),
    ("bad.parquet", "not parquet", "magic bytes"),
])
def test_parse_failures_give_the_parsers_message_in_one_line(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    err = _error(source(tmp_path / name))
    assert err.key == "data.source" and f"cannot parse {tmp_path / name}" in err.problem and fragment in err.problem


def test_txt_folders_have_no_columns(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert _error(source(tmp_path, label_column="y")).key == "data.label_column"
    assert _error(source(tmp_path, records=RecordFormat.CHAT)).key == "data.records"


# ---------------------------------------------------------------- built-ins


def test_builtin_loaders_are_the_catalogued_datasets():
    assert list(BUILTIN_LOADERS) == list(BUILTIN_DATASETS)


def test_builtin_chatterbot_chat_records_alternate_user_and_assistant():
    text = load_data(DataConfig(source="chatterbot"))
    chat = load_data(DataConfig(source="chatterbot", records=RecordFormat.CHAT))
    assert chat.chat and not text.chat and chat.groups == text.groups and len(chat) > 100
    for joined, turns in zip(text.examples, chat.examples):
        assert [m.role for m in turns] == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2)
        assert "\n".join(m.content for m in turns) == joined


# ---------------------------------------------------------------- end to end


TINY_RUN = ["data.max_length=32", "data.eval_examples=8", "data.test_fraction=0.25", "model.regime=full",
            "model.lora_layers=[]", "privacy.mode=off", "training.rounds=1", "training.local_steps=1",
            "training.batch_size=8", "evaluation.generations=0"]


def test_end_to_end_tiny_llama_on_a_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "notes.jsonl", [{"text": f"note number {i} about federated privacy"}
                                                  for i in range(40)])
    cfg = load_config(overrides=[*TINY_RUN, f"data.source={path}", "model.source=tiny_llama",
                                 "partition.scheme=iid", "partition.num_clients=2"])
    res = privfed.run(cfg, tmp_path / "run", progress=False)
    assert [c["examples"] for c in res["partition"]] == [15, 15]
    assert np.isfinite(res["rounds"][-1]["eval_loss"])


def test_end_to_end_tiny_bert_on_a_csv_with_labels(tmp_path):
    rows = [{"text": f"{word} story number {i}", "label": word} for i in range(20) for word in ("sport", "tech")]
    path = write_csv(tmp_path / "news.csv", rows)
    cfg = load_config(overrides=[*TINY_RUN, f"data.source={path}", "data.label_column=label",
                                 "model.source=tiny_bert", "partition.scheme=dirichlet", "partition.num_clients=2",
                                 "partition.min_examples=4"])
    res = privfed.run(cfg, tmp_path / "run", progress=False)
    assert 0 <= res["rounds"][-1]["eval_accuracy"] <= 1  # a classifier ran
    assert sum(c["examples"] for c in res["partition"]) == 30
    assert set().union(*(c["label_histogram"] for c in res["partition"])) == {"sport", "tech"}


def test_cli_prints_a_data_file_error_as_one_line_and_writes_nothing(capsys, tmp_path):
    from privfed.cli import main

    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": broken\n')
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["run", "--out", str(out), "--no-progress", "--set", f"data.source={tmp_path / 'bad.jsonl'}",
                 "--set", "model.source=tiny_llama", "--set", "model.regime=full", "--set", "partition.scheme=iid"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"privfed: config error: data.source: cannot parse {tmp_path / 'bad.jsonl'}: JSON parse")
    assert not out.exists()
