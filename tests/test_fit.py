"""`bertserve fit`: train -> quality gate -> export (parity gate) -> publish in one call, on the tiny
model; a failure in a stage keeps what the stages before it made, and the same call picks it up."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bertserve.errors import FitError
from bertserve.store import list_published
from export.fit import STAGES, run_fit
from export.progress import Progress


def tiny_options(tiny_base: Path, files: dict[str, Path], output: Path, **overrides) -> dict:
    options = dict(task="classification", train=str(files["train"]), validation=str(files["validation"]),
                   output=str(output), base_model=str(tiny_base), learning_rate=1e-3, epochs=15, batch_size=16,
                   max_length=32, evals_per_epoch=1, early_stopping_patience=10)
    options.update(overrides)
    return options


def display(stages=STAGES[:-1]) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress(stream, stages, tty=False), stream


def test_fit_keeps_the_training_when_export_fails_and_resumes_from_it(tiny_base, sentiment_files, tmp_path,
                                                                       monkeypatch):
    output = tmp_path / "runs" / "tiny-fit"
    options = tiny_options(tiny_base, sentiment_files, output)

    def broken_export(*args, **kwargs):
        raise RuntimeError("injected: the disk is full")

    monkeypatch.setattr("export.pipeline.export_model", broken_export)
    progress, shown = display()
    with pytest.raises(FitError) as failed:
        run_fit(options, name="tiny-fit", progress=progress)
    message = str(failed.value)
    assert "the export stage failed: RuntimeError: injected: the disk is full" in message, message
    assert f"the trained model is kept in {output}" in message and "run the same command again" in message
    assert (output / "bertserve.json").is_file() and (output / "model.safetensors").is_file()
    trained_at = (output / "model.safetensors").stat().st_mtime_ns
    lines = shown.getvalue().splitlines()
    assert any(line.startswith("[fit 1/3 train] step ") for line in lines), lines  # the training's steps
    assert any(line.startswith("[fit 3/3 export]") for line in lines), lines
    assert not list_published("classification") or all(r["tag"].split(":")[0] != "tiny-fit"
                                                        for r in list_published("classification"))

    monkeypatch.undo()

    def no_training(cfg):
        raise AssertionError("fit trained again instead of reusing the finished training")

    monkeypatch.setattr("training.run_training", no_training)
    progress, shown = display()
    summary = run_fit(options, name="tiny-fit", progress=progress)
    assert summary["reused_training"] is True
    assert (output / "model.safetensors").stat().st_mtime_ns == trained_at
    assert "reusing the finished training" in shown.getvalue()
    assert summary["tag"] in [r["tag"] for r in list_published("classification")]
    assert summary["validation"]["metric"] == "macro_f1" and summary["validation"]["value"] > 0.9
    assert summary["validation"]["quality"]["weak"] is False
    assert {"pytorch", "fp32", "int8"} <= set(summary["parity"])
    assert summary["variant"] in ("int8", "fp32")
    assert set(summary["wall_time"]["stages_s"]) == {"train", "quality gate", "export"}
    assert "parity gate" in summary["wall_time"]["steps_s"]["export"]
    assert "publish" in summary["wall_time"]["steps_s"]["export"]
    assert summary["curl"].startswith("curl -s localhost:3000/classify ")
    body = json.loads(summary["curl"].split(" -d ", 1)[1].strip("'"))
    assert len(body["texts"]) == 1 and body["texts"][0]
    assert summary["serve"].startswith(f"BERTSERVE_MODEL_CLASSIFICATION={summary['tag']} bentoml serve ")

    # other settings against a finished training: refused, saying how to go on, nothing trained
    progress, _ = display()
    with pytest.raises(FitError, match=r"the train stage failed: .* other settings or data \(epochs: 15 then, 16 "
                       r"now\): pass --overwrite.*\nnothing was trained"):
        run_fit({**options, "epochs": 16}, name="tiny-fit", progress=progress)


def test_fit_serve_starts_a_service_with_the_new_version(tiny_base, sentiment_files, tmp_path):
    """--serve: the service command gets the published tag as the task's default model."""
    started: list[tuple[list[str], dict[str, str]]] = []

    def start(command: list[str], env: dict[str, str]) -> int:
        started.append((command, env))
        return 0

    progress, shown = display(STAGES)
    summary = run_fit(tiny_options(tiny_base, sentiment_files, tmp_path / "served"), name="tiny-served",
                      progress=progress, serve=True, port=3999, start_service=start)
    (command, env), = started
    assert command[1:4] == ["-m", "bentoml", "serve"] and command[-2:] == ["--port", "3999"]
    assert env["BERTSERVE_MODEL_CLASSIFICATION"] == summary["tag"]
    assert "curl -s localhost:3999/classify" in summary["curl"]
    assert "[fit 4/4 serve] starting bentoml serve on port 3999" in shown.getvalue()
    assert f"published {summary['tag']}" in shown.getvalue()  # the summary is shown before the service runs
