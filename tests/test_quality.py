"""The quality gate (a model against a constant answer) and the schedule chosen from the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertserve.artifact import ModelCard
from bertserve.errors import WeakModelError
from bertserve.quality import assess, gate
from bertserve.store import list_published
from training.defaults import LEARNING_RATE, SMALL_DATA_LEARNING_RATE, schedule

ADVICE = ("more training data", "--class-weights balanced", "--learning-rate", "--epochs", "--allow-weak")


def card(problem_type: str = "single_label", labels: tuple[str, ...] = ("ham", "spam")) -> ModelCard:
    metric = {"single_label": "macro_f1", "multi_label": "micro_f1", "regression": "spearman"}[problem_type]
    return ModelCard(task="classification", labels=list(labels), problem_type=problem_type, primary_metric=metric)


def labels(names: list[str]) -> list[dict]:
    return [{"label": name} for name in names]


GOLD = ["ham"] * 26 + ["spam"] * 4  # 30 validation texts, 13 % spam, as 300 SMS messages give


def test_a_model_that_always_says_the_majority_class_is_weak_and_told_what_to_try():
    quality = assess(card(), labels(["ham"] * 30), GOLD)
    assert quality["weak"] and quality["baseline"] == pytest.approx(0.5)  # a guess beats "always ham" (0.46)
    assert quality["never_predicted"] == ["spam"]
    assert any("never predicts 'spam'" in r for r in quality["reasons"])
    with pytest.raises(WeakModelError) as refused:
        gate(quality, allow_weak=False)
    for advice in ADVICE:
        assert advice in str(refused.value), (advice, str(refused.value))
    gate(quality, allow_weak=True)  # published anyway: a warning only


def test_a_model_barely_above_the_baseline_is_weak_and_a_good_one_passes():
    # it says spam once, wrongly: macro-F1 0.45, under 0.5 + 10 % of the way to 1.0
    barely = labels(["ham"] * 25 + ["spam"] + ["ham"] * 4)
    quality = assess(card(), barely, GOLD)
    assert quality["weak"] and quality["never_predicted"] == [] and quality["required"] == pytest.approx(0.55)
    good = labels(["ham"] * 26 + ["spam"] * 3 + ["ham"])
    quality = assess(card(), good, GOLD)
    assert not quality["weak"] and quality["value"] > 0.9 and quality["reasons"] == []


def test_regression_is_measured_against_the_mean_and_multi_label_against_a_constant_set():
    gold = [0.5, 1.5, 2.5, 3.5, 4.5] * 4
    mean = assess(card("regression", ("value",)), [{"value": 2.5}] * 20, gold)
    assert mean["weak"] and mean["metric"] == "mse" and mean["baseline_answer"] == "always the mean (2.5)"
    close = assess(card("regression", ("value",)), [{"value": g + 0.3} for g in gold], gold)
    assert not close["weak"] and close["value"] == pytest.approx(0.09)
    topics = ("politics", "science", "sport")
    gold_sets = [["sport"], ["sport", "science"], ["politics"], ["sport"]] * 5
    constant = assess(card("multi_label", topics), [{"labels": ["sport"]}] * 20, gold_sets)
    assert constant["weak"] and constant["baseline_answer"] == "always ['sport']"
    right = assess(card("multi_label", topics), [{"labels": g} for g in gold_sets], gold_sets)
    assert not right["weak"] and right["value"] == 1.0


def test_one_class_validation_cannot_be_assessed_and_is_not_refused():
    quality = assess(card(), labels(["ham"] * 10), ["ham"] * 10)
    assert not quality["weak"] and "not assessed" in quality["note"]


def test_small_data_schedule_and_large_data_unchanged(tiny_base):
    # 270 SMS messages on the default encoder: 9 steps of 32 per epoch
    from training.defaults import hidden_size

    assert hidden_size(str(tiny_base)) == 32
    small = schedule(None, None, str(tiny_base), 270, 32, small_data=True)
    assert small.learning_rate == SMALL_DATA_LEARNING_RATE and small.epochs == 15
    assert "small data (270 training examples" in small.why
    given = schedule(3e-5, 4, str(tiny_base), 270, 32, small_data=True)
    assert (given.learning_rate, given.epochs) == (3e-5, 4) and "--learning-rate and --epochs as given" in given.why
    assert schedule(None, None, str(tiny_base), 1_500, 32, small_data=True).epochs == 4  # 47 steps an epoch
    for n, epochs in ((2_001, 3.0), (67_349, 2.0), (100_000, 1.0)):  # SST-2 and the like: as before
        large = schedule(None, None, str(tiny_base), n, 32, small_data=True)
        assert (large.learning_rate, large.epochs) == (LEARNING_RATE, epochs)
    assert schedule(None, None, str(tiny_base), 270, 32, small_data=False).learning_rate == LEARNING_RATE
    wide = schedule(None, None, "an-unknown-hub-id", 270, 32, small_data=True)  # width unknown: usual rate
    assert (wide.learning_rate, wide.epochs) == (LEARNING_RATE, 15)


def _always_negative(trained: Path, directory: Path) -> Path:
    """The trained tiny classifier with its head made to answer 'negative' for every text."""
    import torch
    from safetensors.torch import load_file, save_file

    copy = directory / "always-negative"
    shutil.copytree(trained, copy)
    weights = load_file(copy / "model.safetensors")
    config = json.loads((copy / "config.json").read_text())
    negative = int(config["label2id"]["negative"])
    weights["classifier.weight"] = torch.zeros_like(weights["classifier.weight"])
    bias = torch.full_like(weights["classifier.bias"], -5.0)
    bias[negative] = 5.0
    weights["classifier.bias"] = bias
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def test_export_refuses_a_model_that_always_predicts_one_class_unless_allowed(trained_single, tmp_path, capsys):
    from bertserve_cli import main
    from export.pipeline import export_model

    model = _always_negative(trained_single, tmp_path)
    code = main(["export", str(model), "--name", "always-negative"])
    err = capsys.readouterr().err
    assert code == 2
    assert "is weak: validation macro_f1 0.3333 is not clearly above the 0.5 of a guess by the class" in err, err
    assert "it never predicts 'positive', present in the validation data" in err
    for advice in ADVICE:
        assert advice in err, (advice, err)
    assert not [r for r in list_published("classification") if r["tag"].startswith("always-negative:")]

    result = export_model(str(model), name="always-negative", allow_weak=True)
    assert result["quality"]["weak"] is True
    assert result["tag"] in [r["tag"] for r in list_published("classification")]


def test_the_trained_fixture_passes_the_gate(published_single):
    assert published_single["quality"]["weak"] is False
    assert published_single["quality"]["value"] >= published_single["quality"]["required"]


def test_training_warns_when_it_ends_with_a_weak_model(tiny_base, sentiment_files, tmp_path, caplog):
    """A learning rate far too low for the tiny head: it ends where it started, a constant answer."""
    from tests.conftest import tiny_config
    from training import run_training

    card = run_training(tiny_config(tiny_base, sentiment_files["train"], tmp_path / "weak", learning_rate=1e-7,
                                    epochs=1, validation=str(sentiment_files["validation"])))
    assert card.training["quality"]["weak"] is True
    assert "is weak: validation macro_f1" in caplog.text and "export and fit will refuse to publish it" in caplog.text
    assert "--learning-rate" in caplog.text
