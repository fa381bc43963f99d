"""Every service limit and knob, in one place, each settable by a BERTSERVE_* environment variable.

The README's limits table is this file; each field's description says why the limit exists.
"""

from __future__ import annotations

import functools
import os

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bertserve.runtime import MAX_BATCH_TOKENS


@functools.cache  # read once: the HTTP guard asks for the worker count on every answer
def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's CPU quota is not seen:
    set BERTSERVE_WORKERS and BERTSERVE_THREADS there)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTSERVE_", extra="ignore")

    # Which published models are served. BERTSERVE_MODELS names them: `name=tag,...`, e.g.
    # `sentiment=sst2:latest,spam=spam:v3,ner=conll:latest`; each model's task comes from its card and
    # the first of a task is its default (requests that name no `model`). BERTSERVE_MODEL_<TASK>
    # (e.g. BERTSERVE_MODEL_CLASSIFICATION=sst2:v2) names a task's default, served under the task's
    # name unless BERTSERVE_MODELS already serves that tag. With neither, each task serves its latest
    # published model under the task's name. Rolling back is setting the previous tag.
    models: str | None = Field(
        None, description="Served models, `name=store_tag` separated by commas; the first of each task is its "
        "default. Unset: per task BERTSERVE_MODEL_<TASK> or its latest published model."
    )

    max_texts_per_request: int = Field(
        64, ge=1, description="Texts in one request. Bounds the work one caller can queue at once; "
        "send more texts in several requests (they are batched together anyway)."
    )
    max_rerank_texts: int = Field(
        256, ge=1, description="Texts one /rerank request ranks. Every text is a forward pass of the query with "
        "it, so this bounds the work of one request; rank more in several requests (scores are comparable)."
    )
    max_chars_per_text: int = Field(
        20_000, ge=1, description="Characters in one text. Tokenizing is linear in length; this stops "
        "one multi-megabyte text from holding a worker."
    )
    max_chars_per_document: int = Field(
        100_000, ge=1, description="Characters in one /ner text or /qa context. These are read whole, in overlapping "
        "windows (about 4 characters a token), so the limit bounds the windows one text costs."
    )
    max_request_bytes: int = Field(
        2_000_000, ge=1024, description="Request body size (413 above). Checked before the body is parsed."
    )
    max_drain_bytes: int = Field(
        64_000_000, ge=0, description="After a refusal sent before the body was read (413, 401, 429): bytes of "
        "the rest of the body read and thrown away, so that clients which send the whole body before reading "
        "(urllib, requests) get the answer instead of `Connection reset by peer`. A body announced larger is "
        "not read; the connection closes at once."
    )
    max_drain_s: float = Field(
        10.0, ge=0, le=60, description="Time bound of that drain: a client sending slower than this is cut off "
        "(it may then see a reset instead of the answer)."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=55, description="Time budget of one inference request (tokenizing, queueing, the model); "
        "over it the answer is 504. Below BentoML's own 60 s request timeout."
    )
    max_concurrent_requests: int = Field(
        128, ge=1, description="Inference requests in flight at once; one more is answered 429 at once "
        "(with Retry-After) instead of joining an unbounded queue."
    )
    shutdown_drain_s: float = Field(
        5.0, ge=0, le=120, description="After SIGTERM: seconds /readyz answers 503 while requests are still "
        "served, so that load balancers stop sending before the server stops accepting. Shutting down takes at "
        "most this plus BERTSERVE_REQUEST_TIMEOUT_S: the orchestrator's grace period must be longer."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, inference routes (every POST) need `Authorization: Bearer <key>` (401 "
        "otherwise); health, metrics, /info and the API docs stay open."
    )
    admin_reload: bool = Field(
        False, description="Enable POST /admin/reload, which makes the running service serve the newest published "
        "version of its models without a restart (service/reload.py). Off: it answers 404 saying so. It changes "
        "what everyone is served: set BERTSERVE_API_KEY too unless only trusted clients reach the port. SIGHUP "
        "reloads whether this is on or not."
    )
    reload_timeout_s: float = Field(
        50.0, gt=0, le=55, description="How long POST /admin/reload waits for every worker to have reloaded "
        "before answering 504 (the workers still finish). Below BentoML's own 60 s request timeout."
    )
    watch_store_s: float = Field(
        0.0, ge=0, le=3600, description="Look at the BentoML store every this many seconds and reload when a "
        "served model has a newer published version, or a task with no model has one now (how `make serve` "
        "serves the demo models as they land). 0: off; a reload then needs POST /admin/reload or SIGHUP."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description='Origins allowed to call the API from a browser, e.g. '
        '["https://app.example.com"]; none by default (CORS off).'
    )
    batching: bool = Field(True, description="Adaptive batching across requests; off for comparisons.")
    batcher: str = Field(
        "continuous", pattern="^(continuous|cork)$", description="continuous: the model takes whatever is "
        "queued whenever it is free; cork: BentoML's adaptive batcher, which holds requests to fill batches "
        "(service/batching.py has the measurements)."
    )
    max_batch_size: int = Field(
        64, ge=2, description="Texts per batch the adaptive batcher hands to the model. Larger batches "
        "raise throughput until the CPU is saturated, then only add latency."
    )
    max_latency_ms: int = Field(
        2_000, ge=10, description="The batcher's latency budget: a request that would wait longer than "
        "this is answered 503 instead of queueing without bound."
    )
    max_batch_tokens: int = Field(
        MAX_BATCH_TOKENS, ge=128, description="Token budget of one forward pass: a batch is sorted by length and "
        "split so that short texts are not padded to the longest one."
    )
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads per model; 0: the cores divided by "
                         "the workers.")
    workers: int = Field(
        0, ge=0, le=64, description="Worker processes, each with every served model, its own batcher and its own "
        "BERTSERVE_MAX_CONCURRENT_REQUESTS; the kernel spreads connections over them. 0: one per core, at most "
        "4. On 2 cores make bench-http measured 2 workers x 1 thread at 1.5x the requests/s of 1 x 2 (the same "
        "model: HTTP at 0.89 of the offline rate against 0.59); with more than one, some answers sent while "
        "draining for shutdown lack `Connection: close` (none is lost)."
    )
    keepalive_requests: int = Field(
        20, ge=0, description="Requests one keep-alive connection carries before its answer says `Connection: "
        "close` and the client reconnects (nginx's keepalive_requests). With several workers this rebalances "
        "connections: the workers share one listening socket, so one of them can hold most long-lived "
        "connections (seen: all 32 of wrk's connections on one of 2 workers, 1,052 against 1,780 requests/s "
        "balanced). 20 measured better than 100 (/classify over HTTP at 0.87 against 0.79 of the offline rate). "
        "A request counts as many as the texts it runs: 8 connections sending 32 texts a request kept one of 2 "
        "workers 59-71 % busy counted per request (954-1,084 texts/s in four runs), both 95-97 % counted per text "
        "(1,188-1,193). 0: never; not applied with one worker, where there is nothing to balance."
    )
    worker_start_tries: int = Field(
        3, ge=1, le=100, description="Failed worker starts in a row (an exception while loading the models, "
        "e.g. onnxruntime refusing a model file whose checksum matched) before `bentoml serve` gives up and exits "
        "1 naming the cause. Outside containers BentoML restarts an exited worker at once, forever: without "
        "this a worker that cannot start would be restarted in a loop while /readyz stays 503."
    )
    ort_spinning: bool = Field(
        False, description="Let onnxruntime's intra-op threads spin while waiting for work. Off: spinning threads "
        "took about 3.4 ms of CPU per request from the HTTP path on 2 cores (measured with make bench-http)."
    )
    gc_freeze: bool = Field(
        True, description="Freeze the worker's long-lived Python objects (gc.freeze) once its models are loaded and "
        "again after its first 1,000 answers, so that the garbage collector's full collections skip them. On: "
        "measured on 2 cores, a full collection paused a worker 61-111 ms, frozen 9-18 ms (service/heap.py)."
    )
    access_log: bool = Field(
        False, description="BentoML's access log line per request (method, path, status, latency). Off by "
        "default: formatting and writing it cost more CPU per request than tokenizing (measured)."
    )
    tracing: bool = Field(
        False, description="OpenTelemetry spans per request (BentoML's tracing; configure an exporter with "
        "BentoML's tracing settings). Off: every URL is excluded, which skips the per-request span work."
    )
    long_text: str | None = Field(
        None, pattern="^(truncate|error|chunk)$", description="What /classify, /embed and /similarity do with a "
        "text longer than the model's window when a request sends neither `long_text` nor `truncate`: truncate, "
        "error (422) or chunk (read whole in overlapping windows). Unset: the model's own policy (export "
        "--long-text, which the parity gate checked), else truncate."
    )
    shadow_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of served requests re-run, after their answer has gone, on the "
        "fp32 reference exported with the model; the disagreement is counted per model (bertserve_shadow_* "
        "metrics, /info). 0: off (the reference is then never loaded). 0.01-0.05 is a good start."
    )
    shadow_queue: int = Field(
        16, ge=1, le=10_000, description="Sampled requests waiting for the shadow reference, per worker. A sample "
        "that finds the queue full is dropped and counted (bertserve_shadow_dropped_total), never queued "
        "without bound: shadowing never delays a served request."
    )
    variant: str | None = Field(
        None, description="Serve this variant of every model (fp32, int8, int8-vnni, fp16) instead of choosing by "
        "speed; `export`: the one `bertserve export` chose on its machine. A model without it, or whose copy "
        "failed the gate or cannot run here, stops the start with the reason."
    )
    variant_trial_s: float = Field(
        3.0, ge=0, le=60, description="Seconds per model spent at start timing its variants that run here, "
        "one stored held-out input at a time; the fastest is served (/info shows each one's median ms)."
    )
    cpu_isa: str = Field(
        "auto", pattern="^(auto|avx2|avx512|vnni|arm64)$", description="The CPU's int8 instruction set as the "
        "variant choice sees it; auto reads the CPU. `avx2` serves as an AVX2-only node would (no int8-vnni)."
    )
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="auto: CUDA when present.")
    tei_model: str | None = Field(
        None, description="The served model (a name from /info) whose tokenizer and description TEI's /tei/tokenize, "
        "/tei/decode and /tei/info use. None: the default similarity model, else the first model served."
    )

    def worker_count(self) -> int:
        return self.workers or min(4, usable_cores())

    def intra_op_threads(self) -> int:
        """onnxruntime threads per model in each worker."""
        return self.threads or max(1, usable_cores() // self.worker_count())

    def task_default(self, task: str) -> str | None:
        """BERTSERVE_MODEL_<TASK>: the store tag of a task's default model (read when models load)."""
        return os.environ.get(f"BERTSERVE_MODEL_{task.upper()}") or None
