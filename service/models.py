"""Loading published models at start-up: resolve the tag, verify checksums, warm up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bertserve.artifact import ModelCard, verify_files
from bertserve.registry import tasks
from bertserve.runtime import Pipeline
from bertserve.store import resolve
from service.batching import Batcher
from service.settings import ServiceSettings

log = logging.getLogger("bertserve.service")


@dataclass
class LoadedModel:
    task: str
    tag: str
    card: ModelCard
    pipeline: Pipeline
    batcher: Batcher


def verified_models(settings: ServiceSettings) -> dict[str, tuple[str, Path, ModelCard]]:
    """Per task, the published model to serve (the configured tag, else the latest) with its files
    checked against the checksums recorded at export. A configured tag that is missing, or a file
    changed, truncated or missing, raises ArtifactError naming it."""
    found: dict[str, tuple[str, Path, ModelCard]] = {}
    for task in tasks():
        model = resolve(task, getattr(settings, f"model_{task}", None))
        if model is None:
            log.warning("no %s model is published: %s answers 503 (train and `bertserve export` one, "
                        "or run `bertserve quickstart`)", task, tasks()[task].endpoint)
            continue
        verify_files(model[1], model[2])
        found[task] = model
    return found


def load_models(settings: ServiceSettings) -> dict[str, LoadedModel]:
    """Every task with a verified published model, loaded and warmed up."""
    loaded: dict[str, LoadedModel] = {}
    for task, (tag, path, card) in verified_models(settings).items():
        pipeline = Pipeline.from_artifact(path, card, threads=settings.threads, device=settings.device)
        pipeline.predict(list(pipeline.spec.warmup_inputs))
        batcher = Batcher(pipeline, enabled=settings.batching, max_batch_size=settings.max_batch_size,
                          max_latency_ms=settings.max_latency_ms, max_batch_tokens=settings.max_batch_tokens,
                          mode=settings.batcher)
        loaded[task] = LoadedModel(task, tag, card, pipeline, batcher)
        log.info("serving %s with %s (%s, %s)%s", task, tag, card.variant, pipeline.backend.providers[0],
                 " [demo model]" if card.demo else "")
    return loaded
