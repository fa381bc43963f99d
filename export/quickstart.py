"""`bertserve quickstart` (run by `make serve`): where a task has no published model, train a small
demo model on the sample data the project ships, export it through the parity gate and publish it.
`/info` marks such models as demo models."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from bertserve.data import Columns
from bertserve.registry import tasks
from bertserve.store import list_published

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# Package data (pyproject.toml): here in a checkout and in an installed wheel alike.
SAMPLES = Path(__file__).resolve().parent / "samples"

def demos() -> dict[str, dict[str, Any]]:
    """Task -> training options of its demo model (TaskSpec.demo, sample files under SAMPLES; the
    sample files are small: seconds to minutes). The default encoder is already a sentence-embedding
    model: for similarity it is published as it is (epochs 0), scored and parity-checked on the
    sample pairs."""
    return {task: {k: SAMPLES / v if k in ("train", "validation") else v for k, v in spec.demo.items()}
            for task, spec in tasks().items() if spec.demo is not None}


def log_path() -> Path:
    """Where `bertserve quickstart` sends the libraries' output."""
    if (ROOT / "pyproject.toml").is_file():
        return ROOT / "runs" / "quickstart" / "quickstart.log"
    return Path(tempfile.gettempdir()) / "bertserve-quickstart.log"


def ensure_demo_models(force: bool = False) -> dict[str, str]:
    """Task -> store tag of each demo model published now."""
    tags: dict[str, str] = {}
    # The trained directories are needed only until they are published; in a checkout they are kept
    # under runs/quickstart (ignored by git), from an installed package in a temporary directory.
    checkout = (ROOT / "pyproject.toml").is_file()
    with tempfile.TemporaryDirectory(prefix="bertserve-quickstart-") as tmp:
        work = ROOT / "runs" / "quickstart" if checkout else Path(tmp)
        for task, options in demos().items():
            tag = _ensure_demo(task, options, work / task, force)
            if tag:
                tags[task] = tag
    return tags


def _ensure_demo(task: str, options: dict[str, Any], output: Path, force: bool) -> str | None:
    from export.pipeline import export_model
    from training import run_training
    from training.config import TrainConfig

    existing = list_published(task)
    if existing and not force:
        log.info("%s: serving %s (already published; `bertserve quickstart --force` adds a demo model)",
                 task, existing[0]["tag"])
        return None
    why = "publishing a new demo model (--force)" if existing else "no model published yet"
    log.info("%s: %s, training it on %s", task, why, options["train"])
    settings: dict[str, Any] = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    run_training(TrainConfig(task=task, output=str(output), overwrite=True, demo=True, columns=Columns(),
                             **settings))
    # no fp32 reference beside the demo models: they stay small (the image carries them)
    return str(export_model(str(output), name=f"demo-{task}", reference=False)["tag"])
