"""Unusable data or options stop training before any model is loaded, with a message that says what
to change; malformed rows can be skipped and counted instead (`--skip-bad-rows`)."""

from __future__ import annotations

import json
import re

import pytest

import training.classification
import training.ner
import training.qa
import training.similarity
from bertserve.artifact import read_card
from bertserve.data import Columns
from bertserve.errors import ConfigError, DataError
from bertserve_cli import main
from tests.conftest import qa_rows, sentiment_rows, tiny_config, write_jsonl
from training import run_training


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: every check must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    for module in (training.classification, training.ner, training.qa):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(training.similarity, "build_model", refuse)


def tokens(*tagged: str) -> dict:
    """"alice/B-PER went/O" style rows."""
    words = [t.split("/") for t in tagged]
    return {"tokens": [w for w, _ in words], "tags": [tag for _, tag in words]}


def texts(labels: list) -> list[dict]:
    return [{"text": f"film {i} was fine", "label": label} for i, label in enumerate(labels)]


TWO = ["pos", "neg"] * 10
CASES = {
    "empty training file": ("classification", [], None, {}, "no examples found"),
    "one example, no validation": ("classification", texts(["pos"]), None, {},
                                   "1 example cannot be split into training and validation: add training data, "
                                   "or pass --validation"),
    "a single class": ("classification", texts(["pos"] * 20), None, {},
                       "only one label ('pos') occurs in the training data; single-label classification needs "
                       "two or more: add examples of the other classes"),
    "validation labels missing from training": ("classification", texts(TWO), texts(["pos", "meh", "meh"]), {},
                                                "labels that never occur in the training data: 'meh' (2x); add "
                                                "training examples of them, or remove them"),
    "multi-label without a positive label": ("classification", texts([","] * 20), None,
                                             {"columns_label_separator": ","},
                                             "no training example has a label; multi-label classification needs "
                                             "positive labels"),
    "multi-label where every text has every label": ("classification", texts([["a", "b"]] * 20), None, {},
                                                     "every training example carries every label (a, b)"),
    "multi-label validation label missing from training": ("classification", texts([["a"], ["b"]] * 10),
                                                           texts([["a", "c"]]), {}, "'c' (1x)"),
    "regression on a constant": ("classification", texts([2.5] * 20), None, {},
                                 "every training label is 2.5: regression needs varying values"),
    "regression label that is not a number": ("classification", texts(["x"] * 20), None,
                                              {"problem_type": "regression"},
                                              "train.jsonl:1: label 'x'; a regression label must be a finite number"),
    "ner without entities": ("ner", [tokens("alice/O", "went/O")] * 20, None, {},
                             "no entities found, every tag is 'O'"),
    "ner validation type missing from training": ("ner", [tokens("alice/B-PER", "went/O")] * 20,
                                                  [tokens("paris/B-LOC")], {},
                                                  "validation entity types ['LOC'] never occur in the training data"),
    "ner validation without entities": ("ner", [tokens("alice/B-PER", "went/O")] * 20, [tokens("went/O")], {},
                                        "no entities in the validation data, so entity F1 cannot be measured"),
    "qa without answered questions": ("qa", [{**r, "answers": []} for r in qa_rows(20, seed=1)], None, {},
                                      "none of the 18 training questions has an answer"),
    "qa questions longer than the window": ("qa", [{**r, "question": "where did alice go " * 20}
                                                   for r in qa_rows(20, seed=1)], None, {"max_length": 32},
                                            "every question is longer than"),
    "similarity on a constant score": ("similarity", [{"text_a": f"a {i}", "text_b": "b", "score": 1.0}
                                                      for i in range(20)], None, {},
                                       "every training pair has the score 1: similarity needs pairs of different "
                                       "scores"),
    "similarity, one unscored pair": ("similarity", [{"anchor": "a cat", "positive": "a pet"}],
                                      [{"anchor": "a dog", "positive": "a pet"}] * 2, {},
                                      "one training pair; multiple-negatives ranking learns from the other pairs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unusable_data_fails_before_the_model_loads(case, tmp_path, tiny_base, no_model):
    task, train_rows, val_rows, options, message = CASES[case]
    train = tmp_path / "train.jsonl"
    if train_rows:
        write_jsonl(train, train_rows)
    else:
        train.write_text("\n\n")
    if val_rows is not None:
        options["validation"] = str(write_jsonl(tmp_path / "validation.jsonl", val_rows))
    if separator := options.pop("columns_label_separator", None):
        train.write_text("".join(f"{r['text']}\t{r['label']}\n" for r in train_rows))
        train = train.rename(tmp_path / "train.tsv")
        options["columns"] = Columns(text="0", label="1", label_separator=separator)
    cfg = tiny_config(tiny_base, train, tmp_path / "out", task=task, **options)
    with pytest.raises(DataError, match=re.escape(message)):
        run_training(cfg)


@pytest.mark.parametrize("options, message", [
    ({"checkpoint_steps": 0}, "checkpoint steps must be >= 1"),
    ({"resume": True, "overwrite": True}, "pass one"),
])
def test_contradicting_options_are_refused(tmp_path, tiny_base, options, message):
    train = write_jsonl(tmp_path / "train.jsonl", texts(TWO))
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_base, train, tmp_path / "out", **options)


def test_skip_bad_rows_trains_on_the_rest_and_says_what_it_skipped(tmp_path, tiny_base, caplog, capsys):
    rows = sentiment_rows(80, seed=1)
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"text": "broken'  # line 3
    lines[40] = json.dumps({"text": "no label here"})  # line 41
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    common = ["train", "classification", "--train", str(train), "--base-model", str(tiny_base), "--epochs", "1",
              "--batch-size", "16", "--max-length", "32", "--learning-rate", "1e-3"]

    assert main([*common, "--output", str(tmp_path / "strict")]) == 2
    assert f"{train}:3: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists(), "nothing is written when the data is refused"

    assert main([*common, "--output", str(tmp_path / "out"), "--skip-bad-rows"]) == 0
    assert f"skipped 2 malformed rows (first: {train}:3: not valid JSON" in caplog.text
    result = json.loads(capsys.readouterr().out)
    assert result["skipped_rows"] == {"train": 2, "validation": 0}
    card = read_card(tmp_path / "out")
    assert card.data["train"]["skipped_rows"] == 2
    assert card.data["train"]["rows"] + card.data["validation"]["rows"] == 78
