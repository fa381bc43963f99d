"""`bertserve quickstart` (run by `make serve`): where a task has no published model, train a small
demo model on the sample data the project ships, export it through the parity gate and publish it.
`/info` marks such models as demo models.

The demo that needs no training (the default encoder, published as it is for similarity) comes
first, so that a service started beside the quickstart answers `/embed` within a minute; while
it runs, the quickstart notes in the store which demo models it still has to publish
(`bertserve.store.note_demo_training`), and the service says so on their routes and in `/info`."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from bertserve.data import Columns
from bertserve.registry import tasks
from bertserve.store import list_published, note_demo_training

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# Package data (pyproject.toml): here in a checkout and in an installed wheel alike.
SAMPLES = Path(__file__).resolve().parent / "samples"

def demos() -> dict[str, dict[str, Any]]:
    """Task -> training options of its demo model (TaskSpec.demo, sample files under SAMPLES; the
    sample files are small: seconds to minutes), those that need no training first. The default
    encoder is already a sentence-embedding model: for similarity it is published as it is (epochs
    0), scored and parity-checked on the sample pairs."""
    found = {task: {k: SAMPLES / v if k in ("train", "validation") else v for k, v in spec.demo.items()}
             for task, spec in tasks().items() if spec.demo is not None}
    untrained = [t for t, options in found.items() if options.get("epochs") == 0 and tasks()[t].trains_with_zero_epochs]
    return {t: found[t] for t in sorted(found, key=lambda t: t not in untrained)}


def log_path() -> Path:
    """Where `bertserve quickstart` sends the libraries' output."""
    if (ROOT / "pyproject.toml").is_file():
        return ROOT / "runs" / "quickstart" / "quickstart.log"
    return Path(tempfile.gettempdir()) / "bertserve-quickstart.log"


def ensure_demo_models(force: bool = False, log_file: str | None = None) -> dict[str, str]:
    """Task -> store tag of each demo model published now (`log_file`: where the training output
    goes, named to the service while the demo models train)."""
    tags: dict[str, str] = {}
    # The trained directories are needed only until they are published; in a checkout they are kept
    # under runs/quickstart (ignored by git), from an installed package in a temporary directory.
    checkout = (ROOT / "pyproject.toml").is_file()
    todo = demos() if force else {t: o for t, o in demos().items() if not list_published(t)}
    pending = list(todo)
    try:
        with tempfile.TemporaryDirectory(prefix="bertserve-quickstart-") as tmp:
            work = ROOT / "runs" / "quickstart" if checkout else Path(tmp)
            for task, options in demos().items():
                note_demo_training(pending, log_file)
                tag = _ensure_demo(task, options, work / task, force)
                if tag:
                    tags[task] = tag
                if task in pending:
                    pending.remove(task)
    finally:
        note_demo_training([], None)  # done, or failed: nothing is training any more
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
    # no fp32 reference beside the demo models: they stay small (the image carries them). Their report
    # times 8 inputs per variant, not 24: on two idle cores that took 16 of the 38 s the default
    # encoder's export took, the time `make serve` makes people wait for /embed.
    return str(export_model(str(output), name=f"demo-{task}", reference=False, latency_inputs=8)["tag"])
