from __future__ import annotations

import json
import random

import numpy as np
import pytest

from bertserve.artifact import read_card
from bertserve.errors import ConfigError
from tests.conftest import NEGATIVE, POSITIVE, TOPICS, tiny_config, write_jsonl
from training import run_training
from training.classification import class_weights, detect_problem_type


def test_single_label_output_directory(trained_single):
    card = read_card(trained_single)
    assert card.task == "classification" and card.problem_type == "single_label"
    assert card.labels == ["negative", "positive"]
    assert card.data["train"]["sha256"] and card.data["train"]["rows"] == 240
    assert card.base_model and card.max_length == 32
    assert (trained_single / "model.safetensors").is_file()
    assert not list(trained_single.glob("*.bin")), "weights are saved as safetensors only"
    assert (trained_single / "tokenizer.json").is_file()
    assert not (trained_single / "checkpoints").exists(), "checkpoints are removed after a finished run"
    metrics = json.loads((trained_single / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "macro_f1"}
    # the synthetic task is learnable: a model that trains at all gets it right
    assert metrics["accuracy"] >= 0.9, metrics
    assert card.training["best_step"] is not None
    history = json.loads((trained_single / "training_history.json").read_text())
    assert history["best_step"] == card.training["best_step"] and history["metric"]
    evals = [e for e in history["log"] if "eval_loss" in e]
    assert evals and all(e["step"] <= history["global_step"] for e in evals)
    assert any("learning_rate" in e and "loss" in e for e in history["log"])
    assert history["stop_reason"]


def test_problem_type_detection():
    assert detect_problem_type(["a", "b"]) == "single_label"
    assert detect_problem_type(["0", "1", "2"]) == "single_label"
    assert detect_problem_type([["a"], ["a", "b"]]) == "multi_label"
    assert detect_problem_type(["0.5", "3.2", 1]) == "regression"


def test_config_refuses_beginner_mistakes(tmp_path, tiny_base, sentiment_files):
    with pytest.raises(ConfigError, match="learning rate"):
        tiny_config(tiny_base, sentiment_files["train"], tmp_path / "o", learning_rate=0.01)
    with pytest.raises(ConfigError, match="epochs"):
        tiny_config(tiny_base, sentiment_files["train"], tmp_path / "o", epochs=0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        tiny_config(tiny_base, sentiment_files["train"], busy)


def test_class_weights_auto_only_when_imbalanced(tmp_path, tiny_base, sentiment_files):
    cfg = tiny_config(tiny_base, sentiment_files["train"], tmp_path / "o")
    assert class_weights(cfg, [0, 1] * 10, 2, "single_label") is None
    w = class_weights(cfg, [0] * 90 + [1] * 10, 2, "single_label")
    assert w is not None and w[1] / w[0] == pytest.approx(9.0)
    # multi-label: positives weighted per label by negatives/positives, capped at 10
    multi = [[1.0, 0.0]] * 2 + [[0.0, 0.0]] * 2 + [[0.0, 1.0]] * 1 + [[0.0, 0.0]] * 95
    assert class_weights(cfg, multi, 2, "multi_label").tolist() == pytest.approx([10.0, 10.0])
    assert class_weights(cfg, [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]], 2,
                         "multi_label").tolist() == pytest.approx([3.0, 1.0])
    cfg.class_weights = "none"
    assert class_weights(cfg, [0] * 90 + [1] * 10, 2, "single_label") is None
    assert class_weights(cfg, multi, 2, "multi_label") is None


def test_multi_label_tunes_and_stores_thresholds(tmp_path, tiny_base):
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        labels = [t for t in TOPICS if rng.random() < 0.4] or [rng.choice(TOPICS)]
        words = labels + rng.sample(POSITIVE + NEGATIVE, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": labels})
    train = write_jsonl(tmp_path / "ml.jsonl", rows)
    card = run_training(tiny_config(tiny_base, train, tmp_path / "ml", epochs=3))
    assert card.problem_type == "multi_label"
    assert sorted(card.thresholds) == sorted(TOPICS)
    assert all(0 < t < 1 for t in card.thresholds.values())
    assert {"micro_f1", "macro_f1", "micro_f1@0.5", "macro_f1@0.5"} <= set(card.metrics)
    # the validation split was not stratified by a list label, but it exists
    assert card.data["validation"]["rows"] > 0


def test_regression(tmp_path, tiny_base):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(160):
        k = int(rng.integers(0, 4))
        rows.append({"text": " ".join(["great"] * k + ["the", "film"]), "label": round(k + rng.normal(0, 0.1), 3)})
    train = write_jsonl(tmp_path / "reg.jsonl", rows)
    card = run_training(tiny_config(tiny_base, train, tmp_path / "reg", epochs=3))
    assert card.problem_type == "regression" and card.labels == ["value"]
    assert {"pearson", "spearman", "mse"} <= set(card.metrics)


def test_continue_from_earlier_bertserve_model(tmp_path, trained_single, sentiment_files):
    cfg = tiny_config(trained_single, sentiment_files["train"], tmp_path / "again", epochs=1)
    card = run_training(cfg)
    assert card.training["continued_from"] == str(trained_single.resolve())
    assert card.base_model == read_card(trained_single).base_model
