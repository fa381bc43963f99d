"""`bertserve train` under `torchrun --nproc_per_node 2`: data parallel over gloo on CPU, one model
directory written by the first process, laid out as a one-process run's."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertserve.artifact import read_card
from bertserve.errors import ConfigError
from bertserve_cli import main
from training import dist

ROOT = Path(__file__).resolve().parents[1]


def layout(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
       "OMP_NUM_THREADS": "1"}


def torchrun_command(args: list[str], processes: int = 2) -> list[str]:
    """`bertserve` under torchrun, on a free port (--standalone)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "bertserve_cli", *args]


def torchrun(args: list[str], processes: int = 2) -> dict:
    """Run `bertserve` under torchrun; returns the printed result."""
    proc = subprocess.run(torchrun_command(args, processes), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)  # one JSON document: only the first process reports


def test_two_processes_train_one_model_laid_out_like_one_process(tmp_path, tiny_base, sentiment_files, capsys):
    epochs, batch = 15, 16
    common = ["train", "classification", "--train", str(sentiment_files["train"]), "--validation",
              str(sentiment_files["validation"]), "--base-model", str(tiny_base), "--learning-rate", "1e-3",
              "--epochs", str(epochs), "--batch-size", str(batch), "--max-length", "32", "--patience", "10"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--output", str(one)]) == 0
    result = torchrun([*common, "--output", str(two)])

    assert layout(two) == layout(one)
    single, parallel = read_card(one), read_card(two)
    assert (single.training["processes"], parallel.training["processes"]) == (1, 2)
    # each process takes its half of every epoch: half the steps, twice the examples per step
    assert single.training["max_steps"] == math.ceil(240 / batch) * epochs
    assert parallel.training["max_steps"] == math.ceil(240 / (batch * 2)) * epochs
    assert parallel.training["effective_batch_size"] == 2 * batch
    assert parallel.metrics["accuracy"] >= 0.9 and single.metrics["accuracy"] >= 0.9
    assert result["metrics"] == parallel.metrics and result["training"]["processes"] == 2


def test_windowed_validation_keeps_its_order_across_processes(tmp_path, tiny_base, ner_files, trained_ner):
    """NER maps prediction rows back to texts by position: gathered from two processes, the rows
    must come back in dataset order, or entity F1 collapses."""
    output = tmp_path / "ner"
    torchrun(["train", "ner", "--train", str(ner_files["train"]), "--validation", str(ner_files["validation"]),
              "--base-model", str(tiny_base), "--learning-rate", "1e-3", "--epochs", "12", "--batch-size", "16",
              "--max-length", "16", "--patience", "10", "--output", str(output)])
    assert layout(output) == layout(trained_ner)
    assert read_card(output).metrics["f1"] >= read_card(trained_ner).metrics["f1"] - 0.1


def test_killed_data_parallel_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base, sentiment_files):
    output = tmp_path / "run"
    args = ["train", "classification", "--train", str(sentiment_files["train"]), "--validation",
            str(sentiment_files["validation"]), "--base-model", str(tiny_base), "--learning-rate", "1e-3",
            "--epochs", "30", "--batch-size", "16", "--max-length", "32", "--patience", "1000",
            "--checkpoint-steps", "10", "--output", str(output)]
    launcher = subprocess.Popen(torchrun_command(args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(output.glob("checkpoints/checkpoint-*/trainer_state.json")):
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
    finally:
        # the workers first (torchrun starts them in sessions of their own), then the launcher
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            os.kill(int(pid), signal.SIGKILL)
        launcher.kill()
        launcher.wait()
    steps = sorted(int(p.parent.name.split("-")[1]) for p in output.glob("checkpoints/checkpoint-*/trainer_state.json"))
    assert steps and not (output / "bertserve.json").exists(), "killed before the end"

    result = torchrun([*args, "--resume"])
    card = read_card(output)
    assert result["training"]["resumed_from_step"] == card.training["resumed_from_step"] == steps[-1]
    assert card.training["global_step"] == card.training["max_steps"] == math.ceil(240 / 32) * 30
    assert not (output / "checkpoints").exists()


def accelerate_command(launch: list[str], args: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "bertserve_cli", *args]


def test_accelerate_launch_multi_gpu_runs_data_parallel_on_cpus(tmp_path, tiny_base, sentiment_files):
    """`accelerate launch --multi_gpu --num_processes 2` uses torchrun's launcher: on a machine
    without GPUs it starts two gloo processes, laid out and counted as under torchrun."""
    output = tmp_path / "accelerate"
    args = ["train", "classification", "--train", str(sentiment_files["train"]), "--validation",
            str(sentiment_files["validation"]), "--base-model", str(tiny_base), "--learning-rate", "1e-3",
            "--epochs", "3", "--batch-size", "16", "--max-length", "32", "--output", str(output)]
    with socket.socket() as probe:  # a free port for the group's rendezvous (accelerate's default is fixed)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)]
    proc = subprocess.run(accelerate_command(launch, args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # one JSON document: only the first process reports
    card = read_card(output)
    assert result["training"]["processes"] == card.training["processes"] == 2
    assert card.training["effective_batch_size"] == 32
    assert card.training["max_steps"] == math.ceil(240 / 32) * 3
    assert (output / "model.safetensors").is_file() and not (output / "checkpoints").exists()


def test_accelerate_launch_that_starts_one_process_of_several_is_refused(tmp_path, tiny_base, sentiment_files):
    """Without --multi_gpu (or with --cpu), accelerate launch --num_processes 2 starts one process on
    a CPU machine: the run would silently be a one-process run. It stops at once, saying what to run."""
    output = tmp_path / "one-of-two"
    args = ["train", "classification", "--train", str(sentiment_files["train"]), "--base-model", str(tiny_base),
            "--output", str(output)]
    for launch in (["--num_processes", "2"], ["--cpu", "--num_processes", "2"]):
        proc = subprocess.run(accelerate_command(launch, args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode != 0, launch
        assert "accelerate launch started one process, not the several asked for" in proc.stderr, proc.stderr[-2000:]
        assert "torchrun --standalone --nproc_per_node N" in proc.stderr
        assert not output.exists()


def test_mpi_launch_without_torchrun_variables_is_refused():
    with pytest.raises(ConfigError, match=r"started by mpirun as 4 processes.*torchrun --standalone"):
        dist.check_launch({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"})
    dist.check_launch({"OMPI_COMM_WORLD_SIZE": "1"})  # one process: nothing to refuse
    dist.check_launch({"PMI_SIZE": "2", "WORLD_SIZE": "2", "RANK": "0"})  # torchrun under a scheduler
    dist.check_launch({"ACCELERATE_USE_CPU": "False"})  # accelerate launch of one process
