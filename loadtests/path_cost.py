"""The request path's CPU, measured in process (`make path-cost`).

BentoML's whole ASGI app (its middlewares, ours, the task routes' fast path), as `bentoml serve`
builds it, is driven by concurrent in-process clients: no sockets, no uvicorn, no wrk. It prints
the event-loop thread's CPU per request and, of it, tokenizing (`Pipeline.featurize`, timed
around the call). With `--stub-model` the model's batcher answers at once (each text gets a copy of
a row the real model computed for the first request), so the cores are not shared with the
model: a change of 10-30 us a request shows here, where whole HTTP runs on a shared 2-core VM move
by 10 % from one minute to the next. Without it the model runs as in a worker (one onnxruntime
thread) and the figure includes what the model's thread does to the event loop's caches: the
realistic figure, but as noisy as an HTTP run (329-516 us a request for /classify in eight runs on
the 2-core EPYC).

What this does not see: uvicorn (HTTP parsing, the socket calls, the event loop waking per request),
which `make bench-http` measures with the rest. What it counts beside the service: the in-process
clients' own work (building each request's scope, a few us). Benchmarks are not tests: nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STUBBABLE = ("/classify", "/embed")  # routes whose model answers one row per text


class StubBatcher:
    """A model's batcher that answers at once: each text gets a copy of the row the model computed
    for the first text it saw. Everything else (its metrics) is the real batcher's."""

    def __init__(self, batcher: Any):
        self.batcher = batcher
        self.row: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batcher, name)

    async def __call__(self, items: list[Any]) -> list[Any]:
        if self.row is None:
            self.row = self.batcher.pipeline.forward(items[:1])[0]
        return [self.row.copy() for _ in items]


def stub_batchers(served: Any) -> None:
    for model in served.by_name.values():
        model.batcher = StubBatcher(model.batcher)


async def _lifespan(app: Any) -> asyncio.Future[None]:
    """Start the app as uvicorn would (its models load here); the lifespan task, kept while it runs."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the service did not start: {message.get('message', message)}")
    return task


async def _post(app: Any, route: str, body: bytes, client: tuple[str, int]) -> int:
    """One POST through the app, as uvicorn would hand it over; the response status."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "server": ("127.0.0.1", 3000), "client": client, "scheme": "http", "method": "POST", "root_path": "",
             "path": route, "raw_path": route.encode(), "query_string": b"", "state": {},
             "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent, status = False, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: a disconnect would end the request
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def measure(route: str, requests: int, clients: int, stub: bool, limit: int | None) -> dict[str, Any]:
    from http_bench import body_of, route_inputs

    from bertserve.runtime import Pipeline
    from service import BertServe
    from service.service import SERVED

    task, _, texts = route_inputs(route, limit)
    bodies = [json.dumps(body_of(task, route, [text])).encode() for text in texts]
    app = BertServe.to_asgi()
    lifespan = await _lifespan(app)
    if stub:
        stub_batchers(SERVED.models)
    tokenizing = [0.0]
    featurize = Pipeline.featurize

    def timed_featurize(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return featurize(self, *args, **kwargs)
        finally:
            tokenizing[0] += time.thread_time() - started

    Pipeline.featurize = timed_featurize  # type: ignore[method-assign]
    statuses: dict[int, int] = {}
    sent = 0

    async def client(port: int) -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            status = await _post(app, route, bodies[sent % len(bodies)], ("127.0.0.1", port))
            statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(client(40_000 + c) for c in range(clients)))  # warm-up
        sent, statuses, tokenizing[0] = 0, {}, 0.0
        gc.collect()
        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(client(40_000 + c) for c in range(clients)))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        Pipeline.featurize = featurize  # type: ignore[method-assign]
        lifespan.cancel()
    return {"route": route, "task": task, "requests": sent, "clients": clients, "stub_model": stub,
            "statuses": statuses, "requests_per_s": sent / wall,
            "event_loop_cpu_us_per_request": 1e6 * cpu / sent, "tokenize_cpu_us_per_request": 1e6 * tokenizing[0] / sent}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--route", default="/classify", help="a text route: /classify, /embed (others without --stub-model)")
    p.add_argument("--requests", type=int, default=6000, help="measured requests, after as many to warm up")
    p.add_argument("--clients", type=int, default=32, help="concurrent in-process clients")
    p.add_argument("--stub-model", action="store_true", help="the batcher answers at once (see above)")
    p.add_argument("--limit", type=int, help="only the first N inputs")
    args = p.parse_args(argv)
    if args.stub_model and args.route not in STUBBABLE:
        p.error(f"--stub-model: only {', '.join(STUBBABLE)} (their model answers one row per text)")
    os.environ.setdefault("BERTSERVE_THREADS", "1")  # the model as a worker runs it
    os.environ.setdefault("BERTSERVE_WORKERS", "2")  # connections rebalanced as with two workers
    import uvloop

    result = uvloop.run(measure(args.route, args.requests, args.clients, args.stub_model, args.limit))
    print(json.dumps(result))
    print(f"{args.route}: {result['requests']} requests in process ({args.clients} clients"
          f"{', the model stubbed' if args.stub_model else ''}): the event loop {result['event_loop_cpu_us_per_request']:.0f} us "
          f"of CPU a request, of it tokenizing {result['tokenize_cpu_us_per_request']:.0f} us; statuses {result['statuses']}")
    return 0 if set(result["statuses"]) == {200} else 1


if __name__ == "__main__":
    sys.exit(main())
