"""Adaptive batching across requests, with length-aware sub-batches.

Two ways to decide *when* a batch goes to the model (BERTSERVE_BATCHER):

- `continuous` (default): the model never waits for a batch to fill. When it is free, it takes
  everything queued (up to `max_batch_size` texts); while it runs, new requests queue up and form
  the next batch. Batches grow with load by themselves, and an idle service answers at once.
- `cork`: BentoML's adaptive batcher (its CORK dispatcher, the one behind
  `@bentoml.api(batchable=True)`), which holds requests back from the observed latency to fill
  batches. Measured on two cores with `/classify` (SST-2 sentences, `runs/perf/run_cork_vs_cont.sh`
  outside git): at half the peak rate with Poisson arrivals, p50/p95 49/180 ms against 11/43 ms
  with `continuous`; at 32 closed-loop users 205 against 234 requests/s. On a CPU a text costs
  the model about as much alone as in a batch, so waiting for batch-mates buys nothing.

Either way the batch is sorted by token length here and cut into sub-batches (`plan_sub_batches`):
a 500-token text no longer makes thirty short ones pay for its padding. Requests that waited
longer than `max_latency_ms` are answered 503 instead of queueing without bound.

BentoML's dispatcher is used directly rather than through `batchable=True` because that route
takes exactly one argument and cannot answer one request of a batch with a 4xx: validation,
truncation flags and per-request errors happen before a request joins a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import accumulate
from typing import Any

import anyio
import numpy as np

# The one private import of BentoML; bentoml is pinned (1.4.40) in requirements.lock.
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from bertserve.errors import BackendError, BertserveError, NotReadyError
from bertserve.runtime import Encoded, Pipeline, plan_sub_batches
from service import observability

log = logging.getLogger(__name__)


class Job(list):
    """One request's windows on their way through the batcher. A list, because BentoML's
    dispatcher cuts a request with more windows than a batch holds into slices, which run in
    successive batches; every slice shares the request's `times` (when its first batch started,
    when its last one finished)."""

    def __init__(self, items: Sequence[Encoded], times: dict[str, float] | None = None):
        super().__init__(items)
        self.times = times if times is not None else {}

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return Job(super().__getitem__(index), self.times)
        return super().__getitem__(index)

    def ran(self, started: float, finished: float) -> None:
        self.times["started"] = min(started, self.times.get("started", started))
        self.times["finished"] = max(finished, self.times.get("finished", finished))


def _resolve(future: asyncio.Future[list[np.ndarray]], rows: list[np.ndarray]) -> None:
    if not future.done():  # the caller may have gone away, or the batch failed after this request's part
        future.set_result(rows)


def _deliver_threadsafe(loop: asyncio.AbstractEventLoop, futures: list[asyncio.Future[list[np.ndarray]]],
                        r: int, rows: list[np.ndarray]) -> None:
    """From the thread running a batch: request `r` of it gets its rows on the event loop."""
    loop.call_soon_threadsafe(_resolve, futures[r], rows)


class Batcher:
    def __init__(self, pipeline: Pipeline, *, enabled: bool, max_batch_size: int, max_latency_ms: int,
                 max_batch_tokens: int, mode: str = "continuous", name: str | None = None):
        self.pipeline = pipeline
        self.mode = mode
        self._queue: deque[tuple[Job, asyncio.Future[list[np.ndarray]], float]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.task = pipeline.card.task
        self.name = name or self.task  # the served model's name: its metrics series carry it
        self.metrics = observability.ModelMetrics(self.name, self.task)
        self.enabled = enabled
        self.max_batch_size = max_batch_size
        self.max_latency_ms = max_latency_ms
        self.max_batch_tokens = max_batch_tokens
        self._dispatch: Any = None
        self._dispatcher: CorkDispatcher[Any, Any] | None = None

    def run(self, jobs: Sequence[Job],
            deliver: Callable[[int, list[np.ndarray]], None] | None = None) -> list[list[np.ndarray]]:
        """One released batch: all texts of all requests, sub-batched by length. Answers each
        request with its model output rows; post-processing happens per request, after. With
        `deliver`, each request is handed its rows as soon as its last sub-batch has run (short
        texts first), instead of all at the end of the batch."""
        started = time.perf_counter()
        flat = [(r, item) for r, job in enumerate(jobs) for item in job]
        bounds = list(accumulate((len(job) for job in jobs), initial=0))  # job r's rows: bounds[r]:bounds[r + 1]
        lengths = [item.n_tokens for _, item in flat]
        answers: list[np.ndarray] = [None] * len(flat)  # type: ignore[list-item]  # every slot is set below
        left = [len(job) for job in jobs]

        def done(r: int, at: float) -> None:
            jobs[r].ran(started, at)
            if deliver is not None:
                deliver(r, answers[bounds[r] : bounds[r + 1]])

        for group in plan_sub_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            cpu = time.thread_time()
            rows = self.pipeline.forward([flat[i][1] for i in group])
            self.metrics.forward([lengths[i] for i in group], time.thread_time() - cpu)
            complete = []
            for i, row in zip(group, rows, strict=True):
                answers[i] = row
                r = flat[i][0]
                left[r] -= 1
                if not left[r]:
                    complete.append(r)
            if deliver is not None:
                now = time.perf_counter()
                for r in complete:
                    done(r, now)
        finished = time.perf_counter()
        for r, job in enumerate(jobs):
            if deliver is None or not len(job):  # otherwise answered above, as its last sub-batch ran
                done(r, finished)
        return [answers[bounds[r] : bounds[r + 1]] for r in range(len(jobs))]

    async def __call__(self, items: list[Encoded]) -> list[np.ndarray]:
        """The output rows of these windows; records the request's queue and inference time."""
        job = Job(items)
        submitted = time.perf_counter()
        try:
            rows = await self._submit(job)
        except BertserveError:
            raise
        except Exception as exc:  # the runtime failed: log it whole, answer a generic 500
            log.exception("inference failed for a batch")
            raise BackendError("inference failed") from exc
        self.metrics.record("queue", job.times["started"] - submitted)
        observability.note_windows(len(items))
        self.metrics.record("inference", job.times["finished"] - job.times["started"])
        return rows

    async def _submit(self, job: Job) -> list[np.ndarray]:
        if not self.enabled:
            return (await anyio.to_thread.run_sync(self.run, [job]))[0]
        if self.mode == "continuous":
            return await self._continuous(job)
        if self._dispatch is None:  # created lazily: the dispatcher binds to the running loop
            dispatcher = CorkDispatcher(
                max_latency_in_ms=self.max_latency_ms,
                max_batch_size=self.max_batch_size,
                fallback=self._overloaded,
                get_batch_size=len,
                batch_dim=(0, 0),
            )
            self._dispatcher, self._dispatch = dispatcher, dispatcher(self.run)
        return await self._dispatch(job)

    async def _continuous(self, job: Job) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # bound to the running loop, started lazily
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._queue.append((job, future, time.perf_counter()))
        self._wake.set()
        return await future

    async def _work(self) -> None:
        """Whenever the model is free: everything queued (up to max_batch_size texts) as one batch,
        each request answered as soon as its part of the batch has run."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            if not batch:
                continue
            deliver = partial(_deliver_threadsafe, asyncio.get_running_loop(), [future for _, future in batch])
            try:
                rows = await anyio.to_thread.run_sync(self.run, [job for job, _ in batch], deliver)
            except Exception as exc:  # answered per request; __call__ logs it and answers 500
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(batch, rows, strict=True):
                _resolve(future, answer)

    def _take_batch(self) -> list[tuple[Job, asyncio.Future[list[np.ndarray]]]]:
        batch: list[tuple[Job, asyncio.Future[list[np.ndarray]]]] = []
        size = 0
        now = time.perf_counter()
        while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_batch_size):
            job, future, queued = self._queue.popleft()
            if future.done():  # the caller went away
                continue
            if now - queued > self.max_latency_ms / 1000:
                future.set_exception(self._overloaded_error())
                continue
            batch.append((job, future))
            size += len(job)
        return batch

    def close(self) -> None:
        """A model swapped out by a reload (`service/reload.py`), once no request can still hold it:
        its batching task stops (a request that still comes would start it again)."""
        for _, future, _ in self._queue:
            if not future.done():
                future.set_exception(NotReadyError("the model was replaced by a reload; retry"))
        self._queue.clear()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        if self._dispatcher is not None:
            self._dispatcher.shutdown()
            self._dispatcher = self._dispatch = None

    @staticmethod
    def _overloaded_error() -> NotReadyError:
        return NotReadyError("the service is at capacity (batch queue over its latency budget); retry shortly")

    @classmethod
    def _overloaded(cls) -> Any:
        raise cls._overloaded_error()

