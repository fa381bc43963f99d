"""What each request spent where, for the caller (a `Server-Timing` header) and for Prometheus.

Stages: `tokenize` (featurize, off the event loop), `queue` (waiting for the adaptive batcher to
release the batch), `inference` (the forward passes of that batch). The batcher also records,
per forward pass, how many windows it ran, how many tokens it computed and how many of those
were padding; `bertserve_tokens_total{kind="padding"} / sum(bertserve_tokens_total)` is the padding
waste over any interval. BentoML serves these on `/metrics` beside its own request metrics (prometheus_client, as BentoML 1.4
recommends; its multiprocess collector gathers them from every worker).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

STAGES = ("tokenize", "queue", "inference")
MODEL_KEY = "model"  # in a request's timings: the name of the served model that answered
WINDOWS_KEY = "windows"  # in a request's timings: the model inputs (windows) it ran, not a stage

# The current request's stage durations (seconds). The HTTP guard sets a fresh dict per request;
# the handler and the batcher add to it; the guard writes it into the response headers.
_TIMINGS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("bertserve_timings", default=None)

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_SECONDS = Histogram(
    name="bertserve_stage_seconds", documentation="Time a request spent in each stage",
    labelnames=["model", "task", "stage"], buckets=_SECONDS)
BATCH_SIZE = Histogram(
    name="bertserve_batch_size", documentation="Windows (texts) per forward pass",
    labelnames=["model", "task"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_TOKENS = Histogram(
    name="bertserve_batch_tokens", documentation="Tokens computed per forward pass, padding included",
    labelnames=["model", "task"], buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
PADDING_RATIO = Histogram(
    name="bertserve_padding_ratio", documentation="Padding tokens / tokens computed, per forward pass",
    labelnames=["model", "task"], buckets=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0))
TOKENS = Counter(
    name="bertserve_tokens", documentation="Tokens computed by the model; kind: text or padding",
    labelnames=["model", "task", "kind"])
FORWARD_CPU = Counter(
    name="bertserve_forward_cpu_seconds",
    documentation="CPU time of the thread that ran the model's forward passes (all of the model's CPU with one "
                  "onnxruntime thread per worker, BERTSERVE_THREADS=1; with more, their pool threads are not counted)",
    labelnames=["model", "task"])


def start_request() -> dict[str, float]:
    timings: dict[str, float] = {}
    _TIMINGS.set(timings)
    return timings


class ModelMetrics:
    """One served model's series, bound once (a `labels()` lookup per observation costs more
    than the observation)."""

    def __init__(self, model: str, task: str):
        self.model, self.task = model, task
        self._stages = {stage: STAGE_SECONDS.labels(model=model, task=task, stage=stage) for stage in STAGES}
        self._size = BATCH_SIZE.labels(model=model, task=task)
        self._tokens = BATCH_TOKENS.labels(model=model, task=task)
        self._padding = PADDING_RATIO.labels(model=model, task=task)
        self._text = TOKENS.labels(model=model, task=task, kind="text")
        self._pad = TOKENS.labels(model=model, task=task, kind="padding")
        self._cpu = FORWARD_CPU.labels(model=model, task=task)

    def record(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)
        timings = _TIMINGS.get()
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + seconds

    def forward(self, lengths: Sequence[int], cpu_seconds: float) -> None:
        """One forward pass over windows of these lengths, padded to the longest, which took this
        much CPU time of the thread that ran it."""
        self._cpu.inc(cpu_seconds)
        computed = len(lengths) * max(lengths)
        padding = computed - sum(lengths)
        self._size.observe(len(lengths))
        self._tokens.observe(computed)
        self._padding.observe(padding / computed)
        self._text.inc(computed - padding)
        self._pad.inc(padding)


def note_windows(count: int) -> None:
    """The current request ran `count` more model inputs (the HTTP guard weighs connections by it)."""
    timings = _TIMINGS.get()
    if timings is not None:
        timings[WINDOWS_KEY] = timings.get(WINDOWS_KEY, 0) + count


def note_model(name: str) -> None:
    """The served model that answers the current request (named in its Server-Timing header)."""
    timings = _TIMINGS.get()
    if timings is not None:
        timings[MODEL_KEY] = name  # type: ignore[assignment]


def server_timing(timings: dict[str, float]) -> bytes:
    """`tokenize;dur=0.41, queue;dur=2.10, inference;dur=5.32, model;desc="sentiment"` (milliseconds,
    W3C Server-Timing; the last entry names the served model that answered)."""
    parts = [f"{stage};dur={timings[stage] * 1000:.2f}" for stage in STAGES if stage in timings]
    if not parts:
        return b""  # answered before any work (a refused request): no header
    model = timings.get(MODEL_KEY)
    if model:
        parts.append(f'model;desc="{model}"')
    return ", ".join(parts).encode()
