"""`hf:` sources read from a local directory, with no network (the tests run with the hub off):
a DatasetDict or a Dataset saved with save_to_disk, or a directory of data files; and the errors
that say how to write the source when it names nothing readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertserve.artifact import read_card
from bertserve.data import Columns, describe_source, load_examples, load_pairs
from bertserve.data_ner import load_ner_examples
from bertserve.data_qa import load_qa_examples
from bertserve.errors import DataError
from bertserve_cli import main
from tests.conftest import ner_rows, sentiment_rows, write_jsonl

LABELS = ["negative", "positive"]


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """load_dataset converts data files into an Arrow cache: keep it out of the home directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def as_dataset(rows: list[dict]):
    """The rows as the hub ships such data: labels as ClassLabel ids, named in the features."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    return datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                       "label": [LABELS.index(r["label"]) for r in rows]}, features=features)


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory) -> Path:
    import datasets

    directory = tmp_path_factory.mktemp("hf-saved") / "sentiment"
    datasets.DatasetDict({"train": as_dataset(sentiment_rows(240, seed=1)),
                          "validation": as_dataset(sentiment_rows(60, seed=2))}).save_to_disk(str(directory))
    return directory


def test_training_from_a_saved_dataset_dict(tmp_path, tiny_base, saved_dict, capsys):
    """The session's sentiment data as a saved DatasetDict: the same examples as the JSONL files,
    ClassLabel ids read as their names, and a model that learns them. The card names the resolved
    directory and split, with a checksum of the directory."""
    import torch

    output = tmp_path / "from-hf"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "classification", "--train", f"hf:{saved_dict}:train", "--validation",
                     f"hf:{saved_dict}:validation", "--base-model", str(tiny_base), "--learning-rate", "1e-3",
                     "--epochs", "15", "--batch-size", "16", "--max-length", "32", "--patience", "10",
                     "--output", str(output)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    capsys.readouterr()
    card = read_card(output)
    assert card.labels == LABELS
    assert card.data["train"]["rows"] == 240 and card.data["validation"]["rows"] == 60
    assert card.data["train"]["source"] == f"hf:{saved_dict.resolve()}:train"
    assert card.data["train"]["sha256"] and card.data["train"]["sha256"] == card.data["validation"]["sha256"]
    assert card.metrics["accuracy"] >= 0.9, card.metrics
    written = [json.loads(line) for line in (output / "validation.jsonl").read_text().splitlines()]
    assert written == sentiment_rows(60, seed=2)


def test_a_saved_dataset_a_data_file_directory_and_the_jsonl_read_the_same(tmp_path, saved_dict, monkeypatch):
    rows = sentiment_rows(30, seed=4)
    one = tmp_path / "one"
    as_dataset(rows).save_to_disk(str(one))
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "train.jsonl", rows)
    write_jsonl(files / "test.jsonl", rows[:5])
    columns = Columns()
    assert load_examples(f"hf:{one}", columns) == rows  # one saved Dataset: no split to name
    assert load_examples(f"hf:{files}:train", columns) == rows
    assert load_examples(f"hf:{files}:test", columns) == rows[:5]
    assert load_examples(f"hf:{saved_dict}:validation", columns) == sentiment_rows(60, seed=2)
    monkeypatch.chdir(tmp_path)  # a relative directory, as a path and as a bare name
    assert load_examples("hf:./files:test", columns) == load_examples("hf:files:test", columns) == rows[:5]
    assert describe_source("hf:./files:test")["source"] == f"hf:{files.resolve()}:test"
    # provenance changes with the data
    before = describe_source(f"hf:{files}:train")["sha256"]
    write_jsonl(files / "train.jsonl", rows[:-1])
    assert describe_source(f"hf:{files}:train")["sha256"] != before


def test_ner_from_a_saved_dataset_with_tag_names(tmp_path):
    import datasets

    rows = ner_rows(20, seed=3)
    names = sorted({t for r in rows for t in r["tags"]})
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    ds = datasets.Dataset.from_dict({"tokens": [r["tokens"] for r in rows],
                                     "ner_tags": [[names.index(t) for t in r["tags"]] for r in rows]},
                                    features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ner"))
    from_hf = load_ner_examples(f"hf:{tmp_path / 'ner'}:train")
    write_jsonl(tmp_path / "ner.jsonl", rows)
    assert from_hf == load_ner_examples(str(tmp_path / "ner.jsonl"))


def test_errors_say_how_to_write_the_source(tmp_path, saved_dict):
    columns = Columns()
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"no directory .*nowhere: check the path") as err:
        load_examples(f"hf:{missing}:train", columns)
    assert "hf:DIRECTORY:SPLIT" in str(err.value)
    with pytest.raises(DataError, match=r"no split 'test' in .* \(it has train, validation\): write hf:.*:train"):
        load_examples(f"hf:{saved_dict}:test", columns)
    with pytest.raises(DataError, match=r"has the splits train, validation: name one, e.g. hf:.*sentiment:train"):
        load_examples(f"hf:{saved_dict}", columns)
    one = tmp_path / "one"
    as_dataset(sentiment_rows(4, seed=1)).save_to_disk(str(one))
    with pytest.raises(DataError, match=r"holds one dataset .*no split name.*not a split 'train': write hf:"):
        load_examples(f"hf:{one}:train", columns)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no dataset: neither one saved with save_to_disk"):
        load_examples(f"hf:{empty}:train", columns)
    with pytest.raises(DataError, match="local directory takes hf:DIRECTORY or hf:DIRECTORY:SPLIT"):
        load_examples(f"hf:{saved_dict}:default:train", columns)
    # a hub name that is no local directory: with the hub off, the error says so and names the local form
    with pytest.raises(DataError, match=r"could not load from the Hugging Face hub .*hf:DIRECTORY\[:SPLIT\]"):
        load_examples("hf:no-such-owner/no-such-set:train", columns)
    with pytest.raises(DataError, match="no local directory 'no-such-set' here"):
        load_examples("hf:no-such-set", columns)
    # tasks that read files only refuse an hf: source, saying what to do instead
    with pytest.raises(DataError, match=r"sentence pairs are read from files.*to_json"):
        load_pairs(f"hf:{saved_dict}:train", columns)
    with pytest.raises(DataError, match=r"QA questions are read from files.*to_json"):
        load_qa_examples(f"hf:{saved_dict}:train")
