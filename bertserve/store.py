"""Published models live in the BentoML model store (`bentoml models list` shows them).

Every export publishes a new version under its name; rolling back is serving the previous tag
(`BERTSERVE_MODEL_<TASK>=name:version`). Paths come from the store, never from a request.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bertserve.artifact import CARD_FILE, ModelCard, read_card
from bertserve.errors import ArtifactError

TASK_LABEL = "bertserve-task"


def publish(artifact_dir: str | Path, name: str, card: ModelCard) -> str:
    import bentoml

    labels = {TASK_LABEL: card.task, "variant": card.variant or "", "demo": str(card.demo).lower()}
    metadata = {"problem_type": card.problem_type or "", "primary_metric": card.primary_metric,
                "base_model": Path(card.base_model).name if card.base_model else ""}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for item in Path(artifact_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, Path(model.path) / item.name)
    return str(model.tag)


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
