"""`bertserve evaluate`: score a published model (an exported artifact directory or a store tag)
or a running service on labeled data, through the serving pipeline or the service's HTTP route.
Torch-free: a trained (PyTorch) directory is scored through a loader the caller passes in."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertserve.artifact import ONNX_FILE, read_card, verify_files
from bertserve.data import Columns, load_task_examples
from bertserve.errors import ArtifactError, ConfigError
from bertserve.registry import get_task
from bertserve.runtime import LongText, Pipeline

log = logging.getLogger(__name__)


def model_path(ref: str) -> Path:
    """A directory as given, or the store directory of a published tag."""
    path = Path(ref)
    if path.exists():
        return path
    if ":" not in ref and "/" in ref:
        raise ArtifactError(f"{ref}: no such directory")
    from bertserve.store import resolve

    found = resolve(None, ref)
    assert found is not None  # with a tag, resolve returns or raises
    return found[1]


def load_pipeline(ref: str, load_trained: Callable[[Path], Pipeline] | None = None) -> Pipeline:
    """An exported artifact (a directory or a store tag) on ONNX Runtime; a trained directory
    through `load_trained` (the PyTorch side, `training.predict.torch_pipeline`)."""
    path = model_path(ref)
    card = read_card(path)
    if (path / ONNX_FILE).is_file():
        verify_files(path, card)
        return Pipeline.from_artifact(path, card)
    if load_trained is None:
        raise ConfigError(f"{ref} is a trained (PyTorch) directory: export it, or evaluate it with training installed")
    return load_trained(path)


def evaluate(ref: str, data: str, columns: Columns, batch_size: int = 64, threshold: float | None = None,
             limit: int | None = None, task: str | None = None, model: str | None = None,
             load_trained: Callable[[Path], Pipeline] | None = None,
             long_text: LongText | None = None) -> dict[str, Any]:
    """Score a model on labeled data: a published artifact through the serving pipeline, a trained
    directory through `load_trained`, or a running service (`ref` is its URL) through the task's
    route, choosing the served model `model` (default: the task's default model)."""
    if ref.startswith(("http://", "https://")):
        from bertserve.client import ServiceClient

        client = ServiceClient(ref)
        if task is None and model is None:
            served = client.served()["models"]
            if len(served) != 1:
                raise ConfigError(f"the service at {ref} serves {len(served)} models ({', '.join(served)}): "
                                  "pass --model NAME or --task TASK")
            model = next(iter(served))
        name, tag, card = client.card(task, model)
        examples = load_task_examples(card.task, data, columns)[: limit or None]
        texts, gold = get_task(card.task).split_examples(examples)
        results = client.predict(card.task, texts, batch_size=batch_size, model=name,
                                 extra=long_text.record() if long_text is not None else None)
        ref = f"{ref} ({name} = {tag})"
    else:
        pipeline = load_pipeline(ref, load_trained)
        card = pipeline.card
        if threshold is not None:
            card.thresholds = dict.fromkeys(card.labels, threshold)
        examples = load_task_examples(card.task, data, columns)[: limit or None]
        texts, gold = pipeline.spec.split_examples(examples)
        results = pipeline.predict(texts, batch_size=batch_size, progress=True, long_text=long_text)
    metrics = get_task(card.task).score(results, gold, card)
    log.info("%s on %s (%d examples): %s", ref, data, len(examples), json.dumps(metrics))
    out = {"model": ref, "variant": card.variant or "pytorch", "data": data, "examples": len(examples),
           "metrics": metrics}
    if long_text is not None:
        out["long_text"] = long_text.record()
    return out
