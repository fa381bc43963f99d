"""Publishing is atomic: a publish killed at any point leaves the store with the old entry, or the
old and the complete new one, never half of one. `BERTSERVE_KILL_RUNS=20` runs the kill 20 times."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from bertserve.artifact import (
    CARD_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    ModelCard,
    checksum_files,
    read_card,
    verify_files,
    write_card,
)

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BERTSERVE_KILL_RUNS", "3"))
# The child publishes with every file copy slowed down, so that a kill lands between files.
CHILD = """
import shutil, sys, time
from bertserve import store
from bertserve.artifact import read_card

copy, delay = shutil.copyfile, float(sys.argv[2])
def slow_copy(*args, **kwargs):  # every file copy, ours and BentoML's (copy2 and copytree use it)
    time.sleep(delay)
    result = copy(*args, **kwargs)
    time.sleep(delay)
    return result
shutil.copyfile = slow_copy
print("publishing", flush=True)
print(store.publish(sys.argv[1], "atomic", read_card(sys.argv[1])), flush=True)
"""


def fake_artifact(directory: Path, seed: int) -> Path:
    directory.mkdir(parents=True)
    rng = random.Random(seed)
    (directory / ONNX_FILE).write_bytes(rng.randbytes(2_000_000))
    (directory / TOKENIZER_FILE).write_text(json.dumps({"seed": seed, "vocab": list(range(5000))}))
    (directory / "extra.txt").write_text("x" * 100_000)
    card = ModelCard(task="classification", labels=["a", "b"], variant="int8", primary_metric="accuracy")
    card.files = checksum_files(directory, [ONNX_FILE, TOKENIZER_FILE, "extra.txt"])
    write_card(directory, card)
    return directory


def publish(home: Path, artifact: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(artifact), str(delay)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def store_state(home: Path) -> dict[str, bool]:
    """Version -> complete, for every version directory in the store; fails on anything else there."""
    models = home / "models"
    names = sorted(p.name for p in models.iterdir()) if models.is_dir() else []
    assert names in ([], ["atomic"]), f"unexpected entries in the store: {names}"
    state: dict[str, bool] = {}
    for version in sorted((models / "atomic").iterdir()) if names else []:
        if version.name == "latest":
            continue
        assert (version / "model.yaml").is_file(), f"{version.name} has no model.yaml"
        assert (version / CARD_FILE).is_file(), f"{version.name} has no {CARD_FILE}"
        verify_files(version, read_card(version))  # every file whole
        state[version.name] = True
    if state:
        latest = (models / "atomic" / "latest").read_text().strip()
        assert latest in state, f"latest points at {latest!r}, not at a complete version"
    return state


def test_a_publish_killed_at_any_point_leaves_the_old_entry_or_the_new_one(tmp_path):
    home = tmp_path / "home"
    old, new = fake_artifact(tmp_path / "old", 1), fake_artifact(tmp_path / "new", 2)
    first = publish(home, old, 0.0)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    old_version = out.split()[-1].split(":")[1]
    assert store_state(home) == {old_version: True}

    timed = publish(home, new, 0.05)  # how long a slowed publish takes, from its first line
    assert timed.stdout.readline().strip() == "publishing"
    started = time.monotonic()
    timed.communicate(timeout=120)
    duration = time.monotonic() - started
    assert timed.returncode == 0
    state = store_state(home)
    assert len(state) == 2
    newest = (home / "models" / "atomic" / "latest").read_text().strip()
    for version in set(state) - {old_version}:  # back to the old entry alone
        import shutil

        shutil.rmtree(home / "models" / "atomic" / version)
    (home / "models" / "atomic" / "latest").write_text(old_version)
    assert newest != old_version

    rng = random.Random(os.environ.get("BERTSERVE_KILL_SEED"))
    outcomes = {"old": 0, "old+new": 0}
    for _ in range(RUNS):
        child = publish(home, new, 0.05)
        assert child.stdout.readline().strip() == "publishing"
        time.sleep(rng.uniform(0, duration * 1.1))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        state = store_state(home)  # asserts that every version there is whole and `latest` is one
        assert old_version in state
        assert len(state) <= 2, state
        outcomes["old" if len(state) == 1 else "old+new"] += 1
        for version in set(state) - {old_version}:
            import shutil

            shutil.rmtree(home / "models" / "atomic" / version)
        (home / "models" / "atomic" / "latest").write_text(old_version)
    print(f"{RUNS} kills in a {duration:.2f} s publish: {outcomes}")
    # what the store tools see afterwards: BentoML lists it, and a new publish works
    check = subprocess.run([sys.executable, "-c", "import bentoml; print(len(bentoml.models.list()))"],
                           env={**os.environ, "BENTOML_HOME": str(home)}, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "1", check.stderr[-2000:]
    staging = home / ".models-publishing"
    again = publish(home, new, 0.0)
    assert again.wait(120) == 0
    assert not staging.exists() or not any(staging.iterdir()), "killed publishes' leftovers were not removed"


def test_publish_writes_a_whole_version_and_moves_latest(tmp_path):
    home = tmp_path / "home"
    for seed in (1, 2):
        child = publish(home, fake_artifact(tmp_path / f"a{seed}", seed), 0.0)
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        version = out.split()[-1].split(":")[1]
        assert (home / "models" / "atomic" / "latest").read_text() == version
    assert len(store_state(home)) == 2
