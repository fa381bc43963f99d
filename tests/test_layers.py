"""The architecture's promises: one-way layers, a lean service, one registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertserve.registry import get_task, register, tasks


def test_service_imports_no_torch_transformers_or_training_code():
    code = (
        "import sys, service; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'optimum', 'training', 'export', 'datasets'}); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unknown_task_name_fails_at_once_with_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown task 'summarization'; known tasks: classification, ner, qa"):
        get_task("summarization")


def test_a_task_registered_twice_is_refused():
    import dataclasses

    twin = dataclasses.replace(get_task("classification"))
    with pytest.raises(ValueError, match="registered twice"):
        register(twin)


def test_no_layer_branches_on_a_task_name():
    """Per-task code lives in bertserve/tasks/ and training/<task>.py; everything else reads the registry."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "grep", "-nE", r"task ?(==|!=|in) ?[(\[\"']", "--", ".", ":!tests"],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    assert out.stdout == "", out.stdout


def test_every_registered_task_is_served():
    from service.service import app

    paths = set(app.openapi()["paths"])
    for name, spec in tasks().items():
        for route in spec.routes:
            assert route.path in paths, f"{name}: {route.path} has no route"
