"""A training run killed mid-way continues from its last complete checkpoint with `--resume`,
losing at most one checkpoint interval, and ends with the same model directory as a run that was
never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertserve.artifact import read_card
from bertserve_cli import main
from tests.conftest import sentiment_rows, tiny_config, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, EVERY = 20, 16, 10  # 240 examples: 15 steps an epoch, 300 steps, a checkpoint every 10


def layout(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def complete_checkpoints(output: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in (output / "checkpoints").glob("checkpoint-*")
                  if (d / "trainer_state.json").is_file())


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base, sentiment_files, trained_single, capsys):
    output = tmp_path / "run"
    args = ["train", "classification", "--train", str(sentiment_files["train"]), "--validation",
            str(sentiment_files["validation"]), "--output", str(output), "--base-model", str(tiny_base),
            "--learning-rate", "1e-3", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--max-length", "32",
            "--patience", "1000", "--checkpoint-steps", str(EVERY)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bertserve_cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (output / "checkpoints").is_dir() or not complete_checkpoints(output):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    done = complete_checkpoints(output)
    assert 0 < done[-1] < EPOCHS * 15, f"killed after the first checkpoint, before the end: {done}"

    # the interrupted directory is recognised, and continued only by the same settings
    assert main(args) == 2
    assert f"holds an interrupted run (last checkpoint at step {done[-1]})" in capsys.readouterr().err
    changed = [a if a != "1e-3" else "5e-4" for a in args]
    assert main([*changed, "--resume"]) == 2
    assert "learning_rate: 0.001 then, 0.0005 now" in capsys.readouterr().err

    assert main([*args, "--resume"]) == 0
    card = read_card(output)
    assert card.training["resumed_from_step"] == done[-1], "resumed from the last complete checkpoint, not 0"
    assert card.training["global_step"] == card.training["max_steps"] == EPOCHS * 15
    assert card.metrics["accuracy"] >= 0.9
    assert layout(output) == layout(trained_single), "the same model directory as an uninterrupted run"


def test_a_checkpoint_killed_while_being_written_is_passed_over(tmp_path, tiny_base, sentiment_files):
    cfg = tiny_config(tiny_base, sentiment_files["train"], tmp_path / "out", resume=True)
    for step, complete in ((10, True), (20, True), (30, False)):
        directory = cfg.checkpoint_dir / f"checkpoint-{step}"
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"")
        if complete:
            (directory / "trainer_state.json").write_text("{}")
    assert cfg.last_checkpoint() == cfg.checkpoint_dir / "checkpoint-20"


def test_resume_refuses_a_finished_model(tmp_path, tiny_base, sentiment_files, trained_single):
    from bertserve.errors import ConfigError

    with pytest.raises(ConfigError, match="holds a finished model and no checkpoint"):
        tiny_config(tiny_base, sentiment_files["train"], trained_single, resume=True)


def test_a_fresh_run_writes_its_settings_beside_the_checkpoints(tmp_path, tiny_base):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(40, seed=1))
    cfg = tiny_config(tiny_base, train, tmp_path / "out", epochs=1)
    settings = cfg.run_settings()
    assert settings["train_sha256"] and "resume" not in settings and "output" not in settings
    assert settings["learning_rate"] == cfg.learning_rate
