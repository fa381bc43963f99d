"""`bertserve quickstart` (run by `make serve`): where a task has no published model, train a small
demo model on the sample data the project ships, export it through the parity gate and publish it.
`/info` marks such models as demo models."""

from __future__ import annotations

import logging
from pathlib import Path

from bertserve.data import Columns
from bertserve.registry import tasks
from bertserve.store import list_published

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
WORK = ROOT / "runs" / "quickstart"

def ensure_demo_models(force: bool = False) -> dict[str, str]:
    """Task -> store tag of each demo model published now."""
    from export.pipeline import export_model
    from training import run_training
    from training.config import TrainConfig

    tags: dict[str, str] = {}
    # each task's demo training options (TaskSpec.demo; the sample files are small: seconds to
    # minutes). The default encoder is already a sentence-embedding model: for similarity it is
    # published as it is (epochs 0), scored and parity-checked on the sample pairs.
    for task, spec in tasks().items():
        if spec.demo is None:
            continue
        options = {k: SAMPLES / v if k in ("train", "validation") else v for k, v in spec.demo.items()}
        existing = list_published(task)
        if existing and not force:
            log.info("%s: serving %s (already published; `bertserve quickstart --force` adds a demo model)",
                     task, existing[0]["tag"])
            continue
        why = "publishing a new demo model (--force)" if existing else "no model published yet"
        log.info("%s: %s, training it on %s", task, why, options["train"])
        output = WORK / task
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
        run_training(TrainConfig(task=task, output=str(output), overwrite=True, demo=True, columns=Columns(),
                                 **settings))
        result = export_model(str(output), name=f"demo-{task}")
        tags[task] = result["tag"]
    return tags
