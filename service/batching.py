"""Adaptive batching across requests, with length-aware sub-batches.

BentoML's adaptive batcher (its CORK dispatcher, the one behind `@bentoml.api(batchable=True)`)
decides *when* to release a batch from the observed latency. It counts texts, not tokens, so
each released batch is sorted by token length here and cut into sub-batches under a token
budget: a 500-token text no longer makes thirty short ones pay for its padding.

The dispatcher is used directly rather than through `batchable=True` because that route takes
exactly one argument and cannot answer one request of a batch with a 4xx: validation,
truncation flags and per-request errors happen before a request joins a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

# The one private import of BentoML; bentoml is pinned (1.4.40) in requirements.lock.
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from bertserve.errors import BackendError, BertserveError, NotReadyError
from bertserve.runtime import Encoded, Pipeline

log = logging.getLogger(__name__)


def plan_sub_batches(lengths: Sequence[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Indices grouped so that (batch size x longest member) stays within `max_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending: the newcomer is the longest member, so it sets the padded width
        if current and ((len(current) + 1) * lengths[i] > max_tokens or len(current) >= max_size):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class Batcher:
    def __init__(self, pipeline: Pipeline, *, enabled: bool, max_batch_size: int, max_latency_ms: int,
                 max_batch_tokens: int):
        self.pipeline = pipeline
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.max_batch_tokens = max_batch_tokens
        self._dispatch: Any = None

    def run(self, requests: Sequence[list[Encoded]]) -> list[list[np.ndarray]]:
        """One released batch: all texts of all requests, sub-batched by length. Answers each
        request with its model output rows; post-processing happens per request, after."""
        flat = [(r, item) for r, items in enumerate(requests) for item in items]
        lengths = [item.n_tokens for _, item in flat]
        answers: list[np.ndarray | None] = [None] * len(flat)
        for group in plan_sub_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            rows = self.pipeline.forward([flat[i][1] for i in group])
            for i, row in zip(group, rows, strict=True):
                answers[i] = row
        out: list[list[np.ndarray]] = [[] for _ in requests]
        for (r, _), answer in zip(flat, answers, strict=True):
            out[r].append(answer)  # type: ignore[arg-type]
        return out

    async def __call__(self, items: list[Encoded]) -> list[np.ndarray]:
        try:
            return await self._submit(items)
        except BertserveError:
            raise
        except Exception as exc:  # the runtime failed: log it whole, answer a generic 500
            log.exception("inference failed for a batch")
            raise BackendError("inference failed") from exc

    async def _submit(self, items: list[Encoded]) -> list[np.ndarray]:
        if not self.enabled:
            return (await anyio.to_thread.run_sync(self.run, [items]))[0]
        if self._dispatch is None:  # created lazily: the dispatcher binds to the running loop
            dispatcher = CorkDispatcher(
                max_latency_in_ms=self.max_latency_ms,
                max_batch_size=self.max_batch_size,
                fallback=self._overloaded,
                get_batch_size=len,
                batch_dim=(0, 0),
            )
            self._dispatch = dispatcher(self.run)
        return await self._dispatch(items)

    @staticmethod
    def _overloaded() -> Any:
        raise NotReadyError("the service is at capacity (batch queue over its latency budget); retry shortly")

