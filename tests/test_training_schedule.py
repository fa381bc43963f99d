"""How a run ends and what it keeps: early stopping, the warm-up and decay of the learning rate, the
time budget (--max-minutes), and which checkpoint a regression run keeps. Each run trains the
tiny BERT for a few seconds, on one thread."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bertserve.artifact import read_card
from bertserve_cli import main
from tests.conftest import regression_rows, tiny_config, write_jsonl
from training import run_training


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread only waits for the first, and on a busy machine for the scheduler."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def history_of(output: Path) -> dict:
    return json.loads((output / "training_history.json").read_text())


def evaluations(history: dict, metric: str) -> list[dict]:
    return [e for e in history["log"] if f"eval_{metric}" in e]


def validation_loss(model_dir: Path) -> float:
    """Mean cross-entropy of the saved model on the validation split the run wrote (all of it in
    one padded batch, as the Trainer evaluated it: 60 examples, evaluation batches of 64)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    card = read_card(model_dir)
    rows = [json.loads(line) for line in (model_dir / "validation.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=card.max_length,
                      return_tensors="pt")
    labels = torch.tensor([card.labels.index(r["label"]) for r in rows])
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(**batch).logits, labels))


def test_early_stopping_ends_the_run_and_keeps_the_best_evaluated_checkpoint(tmp_path, tiny_base, sentiment_files):
    """Six of the 60 validation labels flipped, so macro-F1 cannot reach 1.0: it climbs, stops
    improving, and `patience` evaluations later the run stops, long before its 15 epochs. The model
    saved is the one of the best evaluation (the first at the best score), not the last one trained."""
    patience, every = 5, 10
    rows = [json.loads(line) for line in sentiment_files["validation"].read_text().splitlines()]
    for row in rows[::10]:
        row["label"] = "negative" if row["label"] == "positive" else "positive"
    validation = write_jsonl(tmp_path / "noisy_validation.jsonl", rows)
    output = tmp_path / "early"
    card = run_training(tiny_config(tiny_base, sentiment_files["train"], output, early_stopping_patience=patience,
                                    checkpoint_steps=every, validation=str(validation)))
    history = history_of(output)
    reason = f"early stopping: macro_f1 did not improve for {patience} evaluations in a row"
    assert history["stop_reason"] == card.training["stop_reason"] == reason
    assert card.training["stopped_early"]
    assert history["max_steps"] == math.ceil(240 / 16) * 15
    assert history["global_step"] < history["max_steps"], history["global_step"]

    evals = evaluations(history, "macro_f1")
    scores = [e["eval_macro_f1"] for e in evals]
    best = evals[scores.index(max(scores))]  # only a higher score is an improvement: the first of the best
    assert 0.8 <= best["eval_macro_f1"] < 1.0, scores  # it learned before it stopped
    assert history["best_step"] == card.training["best_step"] == best["step"]
    assert history["best_metric"] == card.metrics["macro_f1"] == best["eval_macro_f1"]
    # exactly `patience` evaluations after the best one, none of them better, then the stop
    after = [e for e in evals if e["step"] > best["step"]]
    assert [e["step"] for e in after] == [best["step"] + every * i for i in range(1, patience + 1)]
    assert all(e["eval_macro_f1"] <= best["eval_macro_f1"] for e in after)
    assert history["global_step"] == after[-1]["step"]

    # the weights saved are the best step's: its validation loss, not the last evaluation's
    kept = validation_loss(output)
    assert kept == pytest.approx(best["eval_loss"], rel=1e-4)
    assert after[-1]["eval_loss"] != pytest.approx(best["eval_loss"], rel=1e-3), (best, after[-1])
    assert not (output / "checkpoints").exists()


def test_a_run_stops_when_its_metric_reaches_the_best_possible_value(tmp_path, tiny_base, sentiment_files):
    """Clean validation labels: macro-F1 reaches 1.0, which no later evaluation could beat (the
    Trainer keeps a later checkpoint only if it scores higher). So the run stops at that evaluation
    instead of `patience` evaluations later, and keeps that step's weights."""
    patience, every = 5, 10
    output = tmp_path / "best"
    card = run_training(tiny_config(tiny_base, sentiment_files["train"], output, early_stopping_patience=patience,
                                    checkpoint_steps=every, validation=str(sentiment_files["validation"])))
    history = history_of(output)
    assert history["stop_reason"] == card.training["stop_reason"] == \
        "validation macro_f1 reached its best possible value"
    evals = evaluations(history, "macro_f1")
    scores = [e["eval_macro_f1"] for e in evals]
    assert scores[-1] == 1.0 and max(scores[:-1]) < 1.0, scores  # the first evaluation at 1.0 is the last
    assert history["global_step"] == evals[-1]["step"] == history["best_step"] == card.training["best_step"]
    assert card.training["stopped_early"] and history["global_step"] < history["max_steps"]
    assert validation_loss(output) == pytest.approx(evals[-1]["eval_loss"], rel=1e-4)


def test_a_patience_longer_than_the_run_trains_on_after_the_best_possible_value(tmp_path, tiny_base, sentiment_files):
    """Early stopping off (`--patience` above the run's evaluations): the run goes to its end even
    though macro-F1 reached 1.0 on the way, and still keeps the first checkpoint at 1.0."""
    output = tmp_path / "all"
    card = run_training(tiny_config(tiny_base, sentiment_files["train"], output, early_stopping_patience=1000,
                                    checkpoint_steps=10, validation=str(sentiment_files["validation"])))
    history = history_of(output)
    scores = [e["eval_macro_f1"] for e in evaluations(history, "macro_f1")]
    assert 1.0 in scores[:-1], scores
    assert history["global_step"] == history["max_steps"] == math.ceil(240 / 16) * 15
    assert card.training["stop_reason"] == "all planned epochs finished"
    assert history["best_step"] == evaluations(history, "macro_f1")[scores.index(1.0)]["step"]


def test_learning_rate_warms_up_linearly_then_decays_to_zero(tmp_path, tiny_base, sentiment_files):
    """warmup_ratio 0.2 of 30 steps: 6 warm-up steps rising to the learning rate, then a linear decay
    over the other 24. The history logs, for each step, the rate that step's update used."""
    output = tmp_path / "warmup"
    rate, ratio, epochs = 1e-3, 0.2, 2
    # checkpoints every 4 steps: the Trainer logs every max(1, 4 // 4) = 1 step
    run_training(tiny_config(tiny_base, sentiment_files["train"], output, epochs=epochs, warmup_ratio=ratio,
                             learning_rate=rate, checkpoint_steps=4, early_stopping_patience=1000,
                             validation=str(sentiment_files["validation"])))
    history = history_of(output)
    total = math.ceil(240 / 16) * epochs
    warmup = math.ceil(total * ratio)
    assert history["global_step"] == history["max_steps"] == total and warmup == 6
    logged = {e["step"]: e["learning_rate"] for e in history["log"] if "learning_rate" in e}
    assert sorted(logged) == list(range(1, total + 1))

    def expected(step: int) -> float:
        done = step - 1  # scheduler steps before this update
        return rate * (done / warmup if done < warmup else (total - done) / (total - warmup))

    for step, lr in logged.items():
        assert lr == pytest.approx(expected(step), rel=1e-6, abs=1e-12), (step, lr)
    rising = [logged[s] for s in range(1, warmup + 2)]
    falling = [logged[s] for s in range(warmup + 1, total + 1)]
    assert rising == sorted(rising) and len(set(rising)) == len(rising)  # strictly up to the peak
    assert falling == sorted(falling, reverse=True) and len(set(falling)) == len(falling)  # strictly down
    assert max(logged.values()) == pytest.approx(rate) and logged[warmup + 1] == pytest.approx(rate)
    assert logged[total] == pytest.approx(rate / (total - warmup))  # the last update; the next would be 0


def test_time_budget_stops_the_run_and_the_saved_model_works(tmp_path, tiny_base, sentiment_files, capsys):
    """--max-minutes 0.002 (0.12 s) against 50 planned epochs (750 steps): the budget runs out in the
    first steps; the run evaluates, saves, and the model directory is complete and scores its data."""
    output = tmp_path / "budget"
    code = main(["train", "classification", "--train", str(sentiment_files["train"]), "--validation",
                 str(sentiment_files["validation"]), "--base-model", str(tiny_base), "--learning-rate", "1e-3",
                 "--epochs", "50", "--batch-size", "16", "--max-length", "32", "--patience", "1000",
                 "--max-minutes", "0.002", "--output", str(output)])
    assert code == 0
    capsys.readouterr()
    card = read_card(output)
    history = history_of(output)
    assert history["stop_reason"] == card.training["stop_reason"] == "the time budget (--max-minutes 0.002) ran out"
    assert history["max_steps"] == math.ceil(240 / 16) * 50
    assert 1 <= history["global_step"] < history["max_steps"] // 10, history["global_step"]
    assert card.training["stopped_early"]
    # the budget evaluates and checkpoints the step it stops at, so there is a best checkpoint to keep
    evals = evaluations(history, "macro_f1")
    assert evals and evals[-1]["step"] == history["global_step"]
    assert history["best_step"] in {e["step"] for e in evals}

    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert main(["evaluate", str(output), "--data", str(sentiment_files["validation"])]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    # (a model this barely trained sits near 0.5: its scores are not compared, only that it runs)
    assert result["examples"] == 60 and result["variant"] == "pytorch"
    assert set(result["metrics"]) == set(card.metrics) and 0 <= result["metrics"]["accuracy"] <= 1


def test_regression_keeps_the_checkpoint_with_the_lowest_validation_mse(tmp_path, tiny_base):
    """A regression head starts near 0 on targets of 0.5-4.5; the validation set has five distinct
    texts, so at the first evaluation the barely-moved head can rank them perfectly by chance
    (Spearman 1.0, MSE 8). Chosen by Spearman, that checkpoint was kept and served values near 0.05;
    the kept checkpoint is the lowest validation MSE, and early stopping watches the MSE too."""
    rows = regression_rows()
    output = tmp_path / "regression"
    card = run_training(tiny_config(tiny_base, write_jsonl(tmp_path / "r.jsonl", rows), output,
                                    validation=str(write_jsonl(tmp_path / "rv.jsonl", rows[:20]))))
    history = history_of(output)
    evals = evaluations(history, "mse")
    assert len(evals) >= 3
    lowest = min(evals, key=lambda e: e["eval_mse"])
    assert history["best_step"] == card.training["best_step"] == lowest["step"]
    assert card.metrics["mse"] == pytest.approx(lowest["eval_mse"])
    assert card.metrics["mse"] < evals[0]["eval_mse"] - 1, (card.metrics, evals[0])
    assert history["metric"] == "mse" and history["best_metric"] == pytest.approx(lowest["eval_mse"])
    assert card.primary_metric == "spearman"  # still what the export gate measures
