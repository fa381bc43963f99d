"""The command line refuses bad input at once: unknown task names, and data errors before torch and
transformers are imported (they take 10 s or more to load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs the command in a fresh interpreter and reports which heavy libraries it imported.
PROBE = """
import json, sys
from bertserve_cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "optimum", "datasets") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def run_cli(*args: str) -> tuple[dict, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    elapsed = time.monotonic() - started
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, elapsed


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", ["missing file", "wrong column", "empty file", "malformed row", "bad validation"])
def test_a_data_error_comes_before_torch_is_imported(tmp_path, case):
    good = _write(tmp_path / "good.jsonl", "".join(json.dumps({"text": f"t{i}", "label": str(i % 2)}) + "\n"
                                                   for i in range(10)))
    train, extra, expected = {
        "missing file": (str(tmp_path / "nope.jsonl"), [], "no such file"),
        "wrong column": (good, ["--text-column", "body"], "no field 'body'"),
        "empty file": (_write(tmp_path / "empty.jsonl", ""), [], "no examples"),
        "malformed row": (_write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'), [], "bad.jsonl:2"),
        "bad validation": (good, ["--validation", str(tmp_path / "nope.tsv")], "nope.tsv"),
    }[case]
    result, stderr, elapsed = run_cli("train", "classification", "--train", train, "--output",
                                      str(tmp_path / "out"), *extra)
    assert result["code"] == 2 and expected in stderr, stderr[-2000:]
    assert result["heavy"] == [], f"imported {result['heavy']} before reporting the data error"
    print(f"{case}: reported in {elapsed:.2f} s")


def test_models_refuses_an_unknown_task_with_the_known_ones(capsys):
    from bertserve.registry import tasks
    from bertserve_cli import main

    with pytest.raises(SystemExit) as exited:
        main(["models", "--task", "clasification"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'clasification'" in err
    assert all(name in err for name in tasks())


def test_quiet_quickstart_sends_library_logs_and_prints_to_the_log_not_the_terminal(capsys):
    import io
    import logging

    from bertserve_cli import library_output_to

    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)  # what basicConfig made: a handler on the terminal
    root.addHandler(terminal)
    library = logging.getLogger("somelibrary.modeling_utils")  # a library logger that propagates
    own = logging.getLogger("otherlibrary")  # one with a handler of its own on the terminal
    own_handler = logging.StreamHandler(sys.stderr)
    own.addHandler(own_handler)
    own.propagate = False
    ours = logging.getLogger("export.pipeline")
    old = library.level, ours.level
    library.setLevel(logging.WARNING)
    ours.setLevel(logging.INFO)
    log_file = io.StringIO()
    try:
        with library_output_to(log_file):
            library.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
            own.warning("TracerWarning: converting a tensor")
            print("a progress bar")
            made_inside = logging.StreamHandler()  # a library configuring its logging meanwhile
            logging.getLogger("somelibrary").addHandler(made_inside)
            ours.info("published demo-similarity")
        library.warning("after: back on the terminal")
    finally:
        root.removeHandler(terminal)
        logging.getLogger("somelibrary").handlers.clear()
        own.handlers.clear()
        library.setLevel(old[0])
        ours.setLevel(old[1])
    err = capsys.readouterr().err
    assert "published demo-similarity" in err and "torch_dtype" not in err and "a progress bar" not in err
    assert "torch_dtype" in log_file.getvalue() and "a progress bar" in log_file.getvalue()
    assert "TracerWarning" in log_file.getvalue() and "TracerWarning" not in err
    assert own_handler.stream is sys.stderr
    assert "published demo-similarity" not in log_file.getvalue()
    assert "after: back on the terminal" in err and made_inside.stream is sys.stderr
