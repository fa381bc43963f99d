"""Published models live in the BentoML model store (`bentoml models list` shows them).

Every export publishes a new version under its name; rolling back is serving the previous tag
(`BERTSERVE_MODEL_<TASK>=name:version`). Paths come from the store, never from a request.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bertserve.artifact import CARD_FILE, ModelCard, read_card
from bertserve.errors import ArtifactError

TASK_LABEL = "bertserve-task"


def publish(artifact_dir: str | Path, name: str, card: ModelCard) -> str:
    """Add the artifact to the store as a new version of `name`, atomically: a process killed at any
    point leaves the store with the versions it had, or with those and the complete new one.

    BentoML's own save copies the files into the store's version directory one by one (a kill
    half-way leaves a version without its files, or without `model.yaml`, which breaks every
    `bentoml models list`) and rewrites the `latest` pointer in place. Here BentoML writes the whole
    version into a private staging store beside the real one (same filesystem), which is then
    renamed into place in one step; the `latest` pointer is replaced by rename too."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    labels = {TASK_LABEL: card.task, "variant": card.variant or "", "demo": str(card.demo).lower()}
    metadata = {"problem_type": card.problem_type or "", "primary_metric": card.primary_metric,
                "base_model": Path(card.base_model).name if card.base_model else ""}
    store = Path(BentoMLContainer.model_store_dir.get())
    staging_root = store.parent / f".{store.name}-publishing"
    _remove_stale_staging(staging_root)
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=staging_root))
    try:
        with bentoml.models.create(name, labels=labels, metadata=metadata,
                                   _model_store=ModelStore(staging)) as model:
            for item in sorted(Path(artifact_dir).iterdir()):
                if item.is_file():
                    shutil.copy2(item, Path(model.path) / item.name)
        tag = model.tag
        version = str(tag.version)  # create() gave it one
        staged = staging / tag.name / version
        _fsync_tree(staged)
        (store / tag.name).mkdir(parents=True, exist_ok=True)
        os.rename(staged, store / tag.name / version)  # the one step: the version is there, whole
        _fsync_dir(store / tag.name)
        pointer = staging / "latest"
        pointer.write_text(version)
        _fsync_file(pointer)
        os.replace(pointer, store / tag.name / "latest")
        _fsync_dir(store / tag.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(tag)


def _remove_stale_staging(staging_root: Path) -> None:
    """Leftovers of publishes that were killed (their process is gone): never part of the store."""
    if not staging_root.is_dir():
        return
    for leftover in staging_root.iterdir():
        pid = leftover.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Files on disk before the rename makes them visible (a power cut must not publish holes)."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(directory) / name)
        _fsync_dir(Path(directory))


def _bertserve_models(task: str | None = None) -> list[Any]:
    import bentoml

    found = [m for m in bentoml.models.list() if m.info.labels.get(TASK_LABEL)]
    if task:
        found = [m for m in found if m.info.labels[TASK_LABEL] == task]
    return sorted(found, key=lambda m: m.creation_time, reverse=True)


def list_published(task: str | None = None) -> list[dict[str, Any]]:
    return [
        {
            "tag": str(m.tag),
            "task": m.info.labels[TASK_LABEL],
            "variant": m.info.labels.get("variant"),
            "demo": m.info.labels.get("demo") == "true",
            "created": m.creation_time.isoformat(timespec="seconds"),
        }
        for m in _bertserve_models(task)
    ]


def resolve(task: str | None, tag: str | None = None) -> tuple[str, Path, ModelCard] | None:
    """The model to serve for `task`: the given tag, else the latest published; None if none.
    With a tag and no task, any bertserve model of that tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    if tag:
        try:
            model = bentoml.models.get(tag)
        except (NotFound, ValueError) as exc:
            raise ArtifactError(f"model {tag!r} is not in the BentoML store ({exc}); "
                                "`bertserve models` lists the published ones") from None
        if task is not None and model.info.labels.get(TASK_LABEL) != task:
            raise ArtifactError(f"model {tag} is a {model.info.labels.get(TASK_LABEL)!r} model, not {task!r}")
    else:
        candidates = _bertserve_models(task)
        if not candidates:
            return None
        model = candidates[0]
    path = Path(model.path)
    if not (path / CARD_FILE).is_file():
        raise ArtifactError(f"model {model.tag} has no {CARD_FILE}; publish it with `bertserve export`")
    return str(model.tag), path, read_card(path)


def store_dir() -> Path:
    """The BentoML model store's directory (`$BENTOML_HOME/models`)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


def store_signature() -> tuple[tuple[str, int], ...]:
    """What changes whenever a model is published or removed: the modification times of the store
    and of each model name's directory (a publish renames a version into it and replaces its
    `latest` pointer). A few `stat` calls: the service's store watch looks often."""
    root = store_dir()
    try:
        entries = [("", root.stat().st_mtime_ns)]
        entries += sorted((d.name, d.stat().st_mtime_ns) for d in root.iterdir() if d.is_dir())
    except FileNotFoundError:
        return ()
    return tuple(entries)


# `bertserve quickstart` notes here which demo models it is still training, so that a service
# started beside it can say so (503 on their routes, /info's `training`).
DEMO_PROGRESS_FILE = "bertserve-quickstart.json"


def _demo_progress_path() -> Path:
    return store_dir().parent / DEMO_PROGRESS_FILE


def note_demo_training(pending: list[str], log_file: str | None) -> None:
    """The tasks whose demo model this process is still to publish (empty: done, the note goes)."""
    path = _demo_progress_path()
    if not pending:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    staged.write_text(json.dumps({"pid": os.getpid(), "pending": pending, "log": log_file}))
    os.replace(staged, path)


def demo_training() -> dict[str, Any] | None:
    """{"pending": [task, ...], "log": file} while a `bertserve quickstart` is training demo models;
    None otherwise (also when the quickstart that wrote the note is gone: killed mid-training)."""
    try:
        note = json.loads(_demo_progress_path().read_text())
        pid, pending = int(note["pid"]), [str(t) for t in note["pending"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    return {"pending": pending, "log": note.get("log")}
