"""`bertserve export --output X` empties X first: it refuses every X whose loss would hurt."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertserve.artifact import ModelCard, write_card
from bertserve.errors import ConfigError
from bertserve_cli import main
from export.pipeline import REPO_ROOT, check_output, export_model


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """A training output as far as the checks look: its card, and a file that must survive."""
    directory = tmp_path / "runs" / "sentiment"
    directory.mkdir(parents=True)
    write_card(directory, ModelCard(task="classification", labels=["a", "b"]))
    (directory / "model.safetensors").write_bytes(b"weights")
    return directory


def refused(output: Path, source: Path, *fragments: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_output(output, source)
    for fragment in ("choose a new or empty directory for --output", *fragments):
        assert fragment in str(caught.value), str(caught.value)


def test_the_model_directory_and_its_parents_are_refused(model_dir):
    refused(model_dir, model_dir, "the model directory or a directory above it")
    refused(model_dir.parent, model_dir, "the model directory or a directory above it")
    refused(model_dir / ".." / ".." / "runs", model_dir, "above it")


def test_home_root_repository_and_current_directory_are_refused(model_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    refused(home, model_dir, "your home directory")
    refused(Path("~"), model_dir, "your home directory")
    refused(Path("/"), model_dir, "the filesystem root")
    refused(REPO_ROOT, model_dir, "the bertserve repository")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    refused(Path("."), model_dir, "the current directory")


def test_a_file_or_a_directory_of_other_things_is_refused(model_dir, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    refused(afile, model_dir, "is a file")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpg")
    (other / "artifact").mkdir()
    refused(other, model_dir, "not an earlier bertserve export", "holiday.jpg", "remove it yourself")


def test_new_empty_and_earlier_export_directories_are_allowed(model_dir, tmp_path):
    check_output(tmp_path / "new" / "export", model_dir)
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", model_dir)
    earlier = tmp_path / "earlier"
    for name in ("raw", "fp32", "int8", "artifact"):
        (earlier / name).mkdir(parents=True)
    check_output(earlier, model_dir)


def test_the_command_refuses_before_deleting_anything(model_dir, capsys):
    code = main(["export", str(model_dir), "--output", str(model_dir.parent)])
    assert code == 2
    assert "above it" in capsys.readouterr().err
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"
    with pytest.raises(ConfigError):
        export_model(str(model_dir), output=str(model_dir))
    assert (model_dir / "model.safetensors").is_file()
