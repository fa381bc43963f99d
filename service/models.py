"""Loading published models at start-up: resolve the tag, verify checksums, warm up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


def load_models(settings: ServiceSettings) -> dict[str, LoadedModel]:
    """Every task with a published model (or a configured tag). A configured tag that is missing,
    or an artifact whose files fail their checksums, stops the start with a message naming it."""
    loaded: dict[str, LoadedModel] = {}
    for task in tasks():
        found = resolve(task, getattr(settings, f"model_{task}", None))
        if found is None:
            log.warning("no %s model is published: %s answers 503 (train and `bertserve export` one, "
                        "or run `bertserve quickstart`)", task, tasks()[task].endpoint)
            continue
        tag, path, card = found
        verify_files(path, card)
        pipeline = Pipeline.from_artifact(path, card, threads=settings.threads, device=settings.device)
        pipeline.predict(list(pipeline.spec.warmup_inputs))
        batcher = Batcher(pipeline, enabled=settings.batching, max_batch_size=settings.max_batch_size,
                          max_latency_ms=settings.max_latency_ms, max_batch_tokens=settings.max_batch_tokens,
                          mode=settings.batcher)
        loaded[task] = LoadedModel(task, tag, card, pipeline, batcher)
        log.info("serving %s with %s (%s, %s)%s", task, tag, card.variant, pipeline.backend.providers[0],
                 " [demo model]" if card.demo else "")
    return loaded
