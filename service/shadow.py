"""Shadow parity: a sample of live requests re-run on the fp32 reference, off the request's path.

The parity gate proves on validation data that the served variant (int8) answers like PyTorch;
shadowing checks the same on production traffic. With BERTSERVE_SHADOW_RATE > 0, each served
model's inference calls are sampled at that rate. A sampled call hands its inputs and the
outputs it was answered with to a bounded queue (full: dropped and counted, never waited on);
one background thread per model, at the lowest CPU priority, runs them through the fp32 variant
that export stored beside the served one (`reference.onnx`, loaded on the first sample), and
compares the two with the task's own parity measure: `agree` (label flips, entity sets, answer
spans, cosine) and `difference` (how far apart, for the histogram).

Counts are per worker process: Prometheus sums the counters over workers
(`sum(bertserve_shadow_agreements_total) / sum(bertserve_shadow_samples_total)`); `/info` shows
the answering worker's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from bertserve.artifact import REFERENCE_ONNX_FILE, TOKENIZER_FILE, ModelCard
from bertserve.errors import ConfigError
from bertserve.registry import get_task
from bertserve.runtime import LongText, OnnxBackend, Pipeline, TextEncoder
from bertserve.variants import FP32

log = logging.getLogger("bertserve.shadow")

SAMPLES = Counter(name="bertserve_shadow_samples", documentation="Served inputs re-run on the fp32 reference",
                  labelnames=["model"])
AGREEMENTS = Counter(name="bertserve_shadow_agreements",
                     documentation="Shadowed inputs the served variant answered as the fp32 reference did",
                     labelnames=["model"])
DROPPED = Counter(name="bertserve_shadow_dropped", documentation="Sampled requests dropped: the shadow queue was full",
                  labelnames=["model"])
AGREEMENT = Gauge(name="bertserve_shadow_agreement", labelnames=["model"], multiprocess_mode="mostrecent",
                  documentation="Share of shadowed inputs answered as the fp32 reference did, so far (this worker)")
DIFFERENCE = Histogram(name="bertserve_shadow_difference", labelnames=["model"],
                       documentation="How far each shadowed answer is from the reference's (the task's measure: "
                       "max |probability difference|, 1 - cosine, entities differing, ...)",
                       buckets=(0.0, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
IDLE = 19  # the shadow thread's nice value: the served path always gets the CPU first


@dataclass
class _Sample:
    inputs: list[Any]
    outputs: Any
    long_text: LongText


class Shadow:
    """One served model's shadow: sampling, the bounded queue, the reference and the counts."""

    def __init__(self, name: str, path: Path, card: ModelCard, rate: float, capacity: int, device: str = "auto",
                 served: str | None = None):
        if (served or card.variant) == FP32:
            raise ConfigError(f"shadow parity is off for model {name!r}: it serves the fp32 variant, the reference "
                              "itself")
        reference = path / (card.variants or {}).get(FP32, {}).get("file", REFERENCE_ONNX_FILE)
        if not reference.is_file():
            raise ConfigError(
                f"shadow parity is off for model {name!r}: it has no fp32 reference ({REFERENCE_ONNX_FILE}) because "
                "it serves fp32 itself, or was exported with --no-reference (the demo models are) or before "
                "shadowing existed; export it again with this version to shadow it")
        self.name, self.card, self.rate = name, card, rate
        self.spec = get_task(card.task)
        self._path, self._reference_file, self._device = path, reference, device
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=capacity)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._reference: Pipeline | None = None
        self.samples = self.agreements = self.dropped = 0
        self.difference_sum = 0.0
        self._samples, self._agreements = SAMPLES.labels(model=name), AGREEMENTS.labels(model=name)
        self._dropped, self._agreement = DROPPED.labels(model=name), AGREEMENT.labels(model=name)
        self._difference = DIFFERENCE.labels(model=name)

    def offer(self, inputs: list[Any], outputs: Any, long_text: LongText) -> None:
        """Called on the request's path: a coin flip and, when sampled, a put that never waits."""
        if random.random() >= self.rate or self._closed.is_set():
            return
        try:
            self._queue.put_nowait(_Sample(inputs, outputs, long_text))
        except queue.Full:
            self.dropped += 1
            self._dropped.inc()
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name=f"shadow-{self.name}", daemon=True)
                    self._thread.start()

    def _load(self) -> Pipeline:
        encoder = TextEncoder(self._path / TOKENIZER_FILE, self.card.max_length)
        backend = OnnxBackend(self._reference_file, threads=1, device=self._device,
                              output_name=self.spec.output_name, spinning=False)
        log.info("shadow parity for %s: fp32 reference loaded (rate %g)", self.name, self.rate)
        return Pipeline(self.card, encoder, backend)

    def _work(self) -> None:
        # Linux: a thread's own nice value (its id as the process id); elsewhere best effort
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IDLE)
        while not self._closed.is_set():
            sample = self._queue.get()
            if sample is None:  # close()
                return
            try:
                self.compare(sample)
            except Exception:  # a shadow failure never reaches a request; it is logged whole
                log.exception("shadow parity failed for a sample of %s", self.name)

    def close(self) -> None:
        """The model was swapped out by a reload: its thread ends after the sample it is on."""
        self._closed.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def compare(self, sample: _Sample) -> None:
        """The reference's answers to a sample against the answers it was served, counted."""
        if self._reference is None:
            self._reference = self._load()
        reference = self._reference.predict(sample.inputs, long_text=sample.long_text)
        served = self.spec.postprocess(sample.outputs, self.card)
        for ref, got in zip(reference, served, strict=True):
            agreed = bool(self.spec.agree(ref, got))
            self.samples += 1
            self._samples.inc()
            if agreed:
                self.agreements += 1
                self._agreements.inc()
            if self.spec.difference is not None:
                difference = float(self.spec.difference(ref, got))
                self.difference_sum += difference
                self._difference.observe(difference)
        self._agreement.set(self.agreements / self.samples if self.samples else 1.0)

    def info(self) -> dict[str, Any]:
        """What `/info` shows (this worker's counts)."""
        out: dict[str, Any] = {"rate": self.rate, "reference": "fp32", "samples": self.samples,
                               "agreement": round(self.agreements / self.samples, 5) if self.samples else None,
                               "dropped": self.dropped, "queued": self._queue.qsize()}
        if self.spec.difference is not None and self.samples:
            out["mean_difference"] = float(np.round(self.difference_sum / self.samples, 6))
        return out
