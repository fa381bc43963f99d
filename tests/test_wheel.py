"""The project as a user installs it: build the wheel, install it into a fresh virtual environment
(no network: the dependencies come from the development environment, not from an index) and run
`bertserve quickstart` from there against a temporary BentoML store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "runs", "build", "reports", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".mypy_cache")
# Stand-ins for three published demo models, so that the quickstart trains only the cheapest one
# (similarity: the default encoder as it is, exported through the parity gate and published).
FAKE_PUBLISHED = """
import sys
from pathlib import Path
from bertserve.artifact import ModelCard, checksum_files, write_card
from bertserve.store import publish

for task in sys.argv[1:]:
    directory = Path(f"fake-{task}")
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"not a model")
    card = ModelCard(task=task, labels=["a"], variant="int8", demo=True)
    card.files = checksum_files(directory, ["model.onnx"])
    write_card(directory, card)
    print(publish(directory, f"demo-{task}", card))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "bertserve"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-index",
                            "--no-build-isolation", "-w", str(out), "-q"], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("bertserve-*.whl")
    return path


def test_the_wheel_holds_the_samples_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from export.quickstart import SAMPLES, demos

    for options in demos().values():
        relative = Path(options["train"]).relative_to(SAMPLES.parent.parent)
        assert relative.as_posix() in names, f"{relative} is not in the wheel"
    assert any(name.endswith("licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "loadtests/")) for name in names)


@pytest.mark.slow
def test_quickstart_runs_from_an_installed_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies: the development environment's packages, after the venv's own (a .pth line;
    # the development environment's editable bertserve is a .pth of its own there, not processed)
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "--no-deps", "--no-index", "-q", str(wheel)], capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "elsewhere"  # not the checkout: nothing may come from the repository
    work.mkdir()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "true",
           "PYTHONPATH": ""}
    python = str(venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import export.quickstart as q, bertserve; print(q.SAMPLES); "
                            "print(bertserve.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    samples, package = where.stdout.split()
    assert samples.startswith(str(site)) and package.startswith(str(site)), where.stdout + where.stderr
    fake = subprocess.run([python, "-c", FAKE_PUBLISHED, "classification", "ner", "qa"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert fake.returncode == 0, fake.stderr[-3000:]
    run = subprocess.run([str(venv / "bin" / "bertserve"), "quickstart", "--json"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    published = json.loads(run.stdout)["published"]
    assert list(published) == ["similarity"] and published["similarity"].startswith("demo-similarity:")
    assert not (site / "runs").exists(), "the quickstart wrote into the installed package"
    # quiet: our progress on the terminal, the libraries' warnings in the log it names
    assert "library output goes to" in run.stderr and "published demo-similarity" in run.stderr
    assert "TracerWarning" not in run.stderr and "torch_dtype" not in run.stderr, run.stderr[-3000:]
