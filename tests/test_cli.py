from __future__ import annotations

import json

import pytest

from bertserve_cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "export", "evaluate", "quickstart", "models"):
        assert command in out


def test_bad_file_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    code = main(["train", "classification", "--train", str(tmp_path / "missing.csv"), "--output",
                 str(tmp_path / "out")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err


def test_learning_rate_guard(tmp_path, capsys, sentiment_files):
    code = main(["train", "classification", "--train", str(sentiment_files["train"]), "--output",
                 str(tmp_path / "out"), "--learning-rate", "0.5"])
    assert code == 2
    assert "learning rate 0.5" in capsys.readouterr().err


def test_evaluate_prints_metrics_json(trained_single, sentiment_files, capsys):
    assert main(["evaluate", str(trained_single), "--data", str(sentiment_files["test"])]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["variant"] == "pytorch" and result["examples"] == 60
    assert set(result["metrics"]) >= {"accuracy", "macro_f1"}


def test_models_lists_published(published_single, capsys):
    assert main(["models", "--task", "classification"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert published_single["tag"] in [r["tag"] for r in rows]
