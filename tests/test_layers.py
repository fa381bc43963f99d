"""The architecture's promises: one-way layers, a lean service, one registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertserve.registry import KNOWN_TASKS, TaskSpec, register, tasks


def test_service_imports_no_torch_transformers_or_training_code():
    code = (
        "import sys, service; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'optimum', 'training', 'export', 'datasets'}); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_registry_refuses_unknown_tasks():
    spec = TaskSpec(name="summarization", auto_model="X", optimum_task="x", endpoint="/x",
                    postprocess=lambda *a: [], score=lambda *a: {}, primary_metric=lambda c: "m",
                    split_examples=lambda examples: ([], []))
    with pytest.raises(ValueError, match="unknown task 'summarization'"):
        register(spec)


def test_every_registered_task_is_served():
    from service.service import app

    paths = set(app.openapi()["paths"])
    for name, spec in tasks().items():
        assert name in KNOWN_TASKS
        assert spec.endpoint in paths, f"{name}: {spec.endpoint} has no route"
