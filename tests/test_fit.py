"""`bertserve fit`: train -> quality gate -> export (parity gate) -> publish in one call, on the tiny
model; a failure in a stage keeps what the stages before it made, and the same call picks it up."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bertserve.errors import ConfigError, FitError
from bertserve.store import list_published
from export.fit import STAGES, render, run_fit
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
    assert summary["variant"] in ("int8", "int8-vnni", "fp32")
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


def test_fit_serve_serves_the_new_version_until_stopped(tiny_base, sentiment_files, tmp_path, monkeypatch):
    """--serve: a real `bentoml serve` answers with the tag just published, the summary (with the curl
    for that port) is shown before it runs, and SIGTERM to fit stops the service and returns."""
    import os
    import signal
    import threading
    import time

    import httpx

    from tests.test_serve_process import free_port

    monkeypatch.setenv("BERTSERVE_SHUTDOWN_DRAIN_S", "0")
    port = free_port()
    answers: list[dict] = []

    progress, shown = display(STAGES)
    finished = threading.Event()

    def client() -> None:
        while progress.current != "serve":  # training and export first; no signal before the service runs
            if finished.wait(0.2):
                return
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        answers.append(httpx.post(f"http://127.0.0.1:{port}/classify", timeout=30,
                                                  json={"texts": ["a wonderful film"]}).json())
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # what stopping `bertserve fit --serve` sends

    calling = threading.Thread(target=client, daemon=True)
    calling.start()
    try:
        summary = run_fit(tiny_options(tiny_base, sentiment_files, tmp_path / "served"), name="tiny-served",
                          progress=progress, serve=True, port=port)
    finally:
        finished.set()
    calling.join(10)
    assert answers and answers[0]["model"] == summary["tag"], answers
    assert answers[0]["results"][0]["label"] == "positive"
    assert summary["serve_exit_code"] == 0
    assert f"curl -s localhost:{port}/classify" in summary["curl"]
    assert summary["serve"].startswith(f"BERTSERVE_MODEL_CLASSIFICATION={summary['tag']} bentoml serve ")
    assert f"[fit 4/4 serve] starting bentoml serve on port {port}" in shown.getvalue()
    assert f"published {summary['tag']}" in shown.getvalue()  # the summary is shown before the service runs


def test_fit_refuses_a_weak_model_with_advice_and_publishes_it_with_allow_weak(tiny_base, sentiment_files,
                                                                               tmp_path, monkeypatch):
    """A learning rate far too low: the model ends as a constant answer. fit stops at the quality gate
    (before any export) with what to try; --allow-weak then publishes the same training."""
    output = tmp_path / "weak"
    options = tiny_options(tiny_base, sentiment_files, output, learning_rate=1e-7, epochs=1)
    progress, _ = display()
    with pytest.raises(FitError) as refused:
        run_fit(options, name="tiny-weak", progress=progress)
    message = str(refused.value)
    assert message.startswith("the quality gate stage failed: the model in ") and " is weak: " in message, message
    for advice in ("more training data", "--class-weights balanced", "--learning-rate", "--epochs", "--allow-weak"):
        assert advice in message, advice
    assert "--allow-weak publishes it without training again" in message
    assert not [r for r in list_published("classification") if r["tag"].startswith("tiny-weak:")]

    monkeypatch.setattr("training.run_training", lambda cfg: pytest.fail("trained again"))
    progress, shown = display()
    summary = run_fit(options, name="tiny-weak", progress=progress, allow_weak=True)
    assert summary["reused_training"] and summary["validation"]["quality"]["weak"] is True
    assert "WEAK, published with --allow-weak" in shown.getvalue()
    assert summary["tag"] in [r["tag"] for r in list_published("classification")]


def test_progress_shows_the_stages_steps_and_where_the_time_went():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, ("train", "export"), tty=False, clock=lambda: now[0])
    progress.stage("train", "training")
    for step in range(1, 101):
        now[0] += 1.0
        progress.training(step, 100, {"eval_macro_f1": 0.9, "eval_loss": 0.2} if step == 50 else {})
    progress.end_stage("validation macro_f1 0.9")
    progress.stage("export")
    progress.step("parity gate: 30 examples")
    now[0] += 12.0
    progress.step("publish")
    now[0] += 3.0
    progress.end_stage()
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if " step " in line]
    assert len(steps) == 11, steps  # every tenth of the run, and the evaluation's own line
    assert "[fit 1/2 train] step 50/100 (50%), 50s, ~50s left; validation macro_f1 0.900, loss 0.200" in lines
    assert "[fit 1/2 train] done in 1m40s: validation macro_f1 0.9" in lines
    assert progress.summary() == {"total_s": 115.0, "stages_s": {"train": 100.0, "export": 15.0},
                                  "steps_s": {"export": {"parity gate": 12.0, "publish": 3.0}}}

    terminal = io.StringIO()
    progress = Progress(terminal, ("train",), tty=True, clock=lambda: now[0])
    progress.stage("train")
    progress.training(1, 4, {})
    progress.training(2, 4, {})
    progress.end_stage()
    assert terminal.getvalue().count("\r") == 2 and terminal.getvalue().endswith("done in 0.0s\n")


def test_the_fit_command_shows_progress_and_sends_library_output_to_its_log(tiny_base, sentiment_files, tmp_path,
                                                                           capsys):
    from bertserve_cli import main

    output = tmp_path / "runs" / "cli" / "model"
    code = main(["fit", "classification", "--train", str(sentiment_files["train"]), "--validation",
                 str(sentiment_files["validation"]), "--base-model", str(tiny_base), "--learning-rate", "1e-3",
                 "--epochs", "8", "--batch-size", "16", "--max-length", "32", "--patience", "10",
                 "--name", "tiny-cli", "--output", str(output), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["tag"].startswith("tiny-cli:") and summary["model_dir"] == str(output)
    log_file = output.parent / "tiny-cli.fit.log"
    assert f"the detailed log go to {log_file}" in err
    assert "[fit 1/3 train] step " in err and "[fit 3/3 export] done in " in err
    assert "{'loss'" not in err and "it/s]" not in err, "the Trainer's own output stays in the log file"
    logged = log_file.read_text()
    assert "{'loss'" in logged or "'train_runtime'" in logged  # the Trainer's log dicts
    assert "schedule: learning rate 0.001, 8 epochs" in logged  # our details, not on the terminal


def test_fit_resumes_an_interrupted_training_from_its_last_checkpoint(tiny_base, sentiment_files, tmp_path):
    output = tmp_path / "interrupted"
    options = tiny_options(tiny_base, sentiment_files, output, epochs=8)  # 15 steps an epoch, a checkpoint each

    class Interrupted(Progress):
        def training(self, step: int, total: int, metrics: dict) -> None:
            super().training(step, total, metrics)
            if step == 35 and not metrics:
                raise KeyboardInterrupt  # Ctrl-C in the third epoch

    with pytest.raises(KeyboardInterrupt):
        run_fit(options, name="tiny-interrupted", progress=Interrupted(io.StringIO(), STAGES[:-1], tty=False))
    assert not (output / "bertserve.json").exists()
    assert (output / "checkpoints" / "checkpoint-30" / "trainer_state.json").is_file()

    progress, shown = display()
    summary = run_fit(options, name="tiny-interrupted", progress=progress)
    assert "resuming the interrupted training: from its last checkpoint" in shown.getvalue()
    card = json.loads((output / "bertserve.json").read_text())
    assert card["training"]["resumed_from_step"] == 30 and card["training"]["global_step"] == 120
    assert summary["reused_training"] is False and summary["tag"].startswith("tiny-interrupted:")


def test_fit_serve_reloads_a_running_service_under_load_without_an_error(tiny_base, sentiment_files, published_single,
                                                                         tmp_path, monkeypatch):
    """A service already on the port (two workers, reloading on) keeps answering four clients while
    `fit --serve` trains, publishes and has it reload: no request fails, and every request sent
    after fit returned is answered by the new tag. A name the service does not serve is refused
    before any training."""
    import time

    from tests.test_reload import LoadLoop, publish_copy
    from tests.test_serve_process import no_task_defaults, start_serve, stop_serve

    old = publish_copy(published_single["artifact"], "fit-live")
    url, proc = start_serve(tmp_path, **no_task_defaults(), BERTSERVE_MODELS=f"sentiment={old}",
                            BERTSERVE_ADMIN_RELOAD="true", BERTSERVE_WORKERS="2", BERTSERVE_THREADS="1",
                            BERTSERVE_SHUTDOWN_DRAIN_S="0")
    port = int(url.rsplit(":", 1)[1])
    progress, shown = display(STAGES)
    try:
        with pytest.raises(ConfigError, match="none of them named 'elsewhere'"):
            run_fit(tiny_options(tiny_base, sentiment_files, tmp_path / "elsewhere"), name="elsewhere",
                    progress=display(STAGES)[0], serve=True, port=port)
        assert not (tmp_path / "elsewhere").exists()  # refused before training
        with LoadLoop(url) as load:
            time.sleep(1.0)
            summary = run_fit(tiny_options(tiny_base, sentiment_files, tmp_path / "live"), name="fit-live",
                              progress=progress, serve=True, port=port)
            returned = time.monotonic()
            time.sleep(2.0)
    finally:
        stop_serve(proc)
    records = load.records
    failed = [r for r in records if r[2] != 200]
    after = [r for r in records if r[0] > returned]
    print(f"{len(records)} requests during fit, {len(failed)} failed, {len(after)} sent after it returned")
    assert not failed, failed[:5]
    assert old in {r[3] for r in records}  # the old version answered while fit trained
    assert after and {r[3] for r in after} == {summary["tag"]}, {r[3] for r in after}
    assert summary["reloaded"]["names"] == ["sentiment"] and summary["reloaded"]["workers"] == 2
    assert summary["reloaded"]["models"]["sentiment"] == {"before": old, "after": summary["tag"]}
    assert "serve_exit_code" not in summary
    assert f"the service on port {port} loads {summary['tag']}" in shown.getvalue()
    assert "served now as sentiment by the running service (2 worker(s) reloaded)" in render(summary)
    assert {"fp32", "int8"} <= set(summary["variants"])
    assert f"variants: {summary['variant']} (this machine's choice)" in render(summary)
