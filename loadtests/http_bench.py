"""`make bench-http`: what the HTTP path delivers against what the model computes offline, in one run.

    python loadtests/http_bench.py [--route /classify] [--model TAG] [--connections 32] [--seconds 20]
                                   [--texts-per-request 1] [--half-peak] [--profile]

1. Offline: the served artifact through the project's runtime (`Pipeline.predict`, batch 32, the
   same path `bertserve bench` times as onnx_int8) over the route's real inputs (the task's bench
   data: SST-2 dev sentences for /classify, STS-B sentences for /embed), best of 3, with the CPU
   time it used per input; and the same path run for as long as the HTTP run, right before and
   after it (a shared machine's speed can change every few seconds: the HTTP run is compared with
   both the best rate and the mean of these two). The best rate is the fastest the model was seen
   offline in the run: the best timed pass, or a sustained run's rate when that was higher (every
   timed pass then ran in a slow stretch).
2. HTTP: `bentoml serve` with that model alone, driven by `wrk` (Debian's package: a C load
   generator; its own CPU is measured and reported) with a Lua script that cycles through the same
   inputs, one request per `--texts-per-request` inputs, on `--connections` keep-alive connections.
   Reported: requests/s, inputs/s, p50/p99, the worker's CPU per request and how much of it is
   outside the model (worker CPU per request minus the model's CPU per input run as a worker runs
   it: its threads, no spinning), and the ratio of
   HTTP inputs/s to offline inputs/s.
3. `--half-peak`: Poisson arrivals at half the measured peak from a small asyncio client, p50/p95/p99.
4. `--profile`: py-spy samples the worker during the wrk run; the Python-side time per request is
   broken down by stage (HTTP parsing, BentoML's middlewares, routing and validation, tokenizing,
   the batcher, onnxruntime, post-processing, serialization, metrics, logging).

JSON and markdown go to reports/bench-http/. Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from steps import SERVE, free_port, resident_mb, start, stop  # noqa: E402

from bertserve.registry import get_task, tasks  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# py-spy frames -> stage: the innermost frame that matches names it, the first pattern here that
# matches it wins (`func (module/path.py:line)`, as py-spy prints frames)
STAGES: tuple[tuple[str, str], ...] = (
    ("onnxruntime", r"onnxruntime/"),
    ("tokenize", r"^(Pipeline\.featurize|TextEncoder\.(encode|windows)) |tokenizers/"),
    ("post-processing", r"bertserve/tasks/"),
    ("batcher", r"service/batching\.py|bertserve/runtime\.py"),
    ("metrics", r"prometheus_client/|service/observability\.py|bentoml/_internal/server/http/instruments"),
    ("logging", r"logging/|bentoml/_internal/server/http/access"),
    ("tracing", r"opentelemetry/"),
    ("serialization", r"fastapi/encoders|fastapi/routing\.py:serialize|json/|orjson|starlette/responses"),
    ("validation", r"pydantic|fastapi/dependencies|fastapi/_compat"),
    ("bentoml middlewares", r"bentoml/|_bentoml_impl/|_bentoml_sdk/"),
    ("our guard", r"service/http\.py"),
    ("routing (starlette/fastapi)", r"starlette/|fastapi/"),
    ("HTTP (uvicorn)", r"uvicorn/|h11|httptools"),
    ("event loop", r"asyncio/|anyio/|uvloop"),
)


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """User + system CPU of a process so far, or of its main thread only (a worker's event loop)."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def worker_pids(server_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(server_pid).children(recursive=True)]


def route_inputs(route_path: str, limit: int | None) -> tuple[str, Any, list[str]]:
    """(task, route, the task's bench inputs as texts) for a text route."""
    from export.bench import bench_inputs

    for spec in tasks().values():
        for route in spec.routes:
            if route.path == route_path:
                inputs, _ = bench_inputs(spec.name, None, limit)
                if not all(isinstance(x, str) for x in inputs):
                    raise SystemExit(f"{route_path}: only routes whose inputs are texts are benched here")
                return spec.name, route, inputs
    raise SystemExit(f"no registered route {route_path}")


def body_of(task: str, route_path: str, texts: list[str]) -> dict[str, Any]:
    """The request body of a text route (the route's own field name)."""
    if route_path == "/v1/embeddings":
        return {"input": texts}
    return get_task(task).request_body(texts)


def one_pass(pipe: Any, texts: list[str]) -> None:
    """All the inputs through the runtime once, batch 32, as `bertserve bench` runs them."""
    from bertserve.runtime import MAX_BATCH_TOKENS

    pipe.predict(texts, batch_size=32, max_batch_tokens=MAX_BATCH_TOKENS)


def offline(path: Path, card: Any, texts: list[str], repeats: int, sustain_s: float) -> dict[str, float]:
    """The served artifact through the runtime, batch 32: inputs/s (best of `repeats`) and CPU/input,
    then the same passes again and again for `sustain_s` seconds: inputs/s over that whole time. The
    best rate catches the machine at its fastest; on a shared VM whose speed switches every few
    seconds (measured here: 1,250 and 790 texts/s in turns for the same model), a rate averaged over
    as long as the HTTP run, right before and after it, is the one to compare."""
    from bertserve.runtime import Pipeline

    pipe = Pipeline.from_artifact(path, card)
    pipe.predict(texts[:32])
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        one_pass(pipe, texts)
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, cpu = wall, used
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < sustain_s:
        one_pass(pipe, texts)
        done += len(texts)
    return {"inputs_per_s": len(texts) / best, "cpu_ms_per_input": 1000 * cpu / len(texts),
            "sustained_inputs_per_s": done / (time.perf_counter() - t0)}


def best_offline_rate(best_pass: float, sustained: Sequence[float]) -> tuple[float, str]:
    """The ratio's denominator: the fastest the model ran offline in this run, and what measured it.
    A sustained run's rate above the best timed pass means every timed pass ran in a slow stretch of the
    machine; comparing HTTP with those would flatter it."""
    if max(sustained, default=0.0) > best_pass:
        return max(sustained), "a sustained run's rate: every timed pass was slower"
    return best_pass, "the best timed pass"


def worker_model_cpu(path: Path, card: Any, texts: list[str], env: dict[str, str]) -> float:
    """CPU ms per input of the model run the way a worker runs it (its onnxruntime threads and
    spinning, from the service's settings with the run's --env applied), batch 32. The offline rate
    above uses every core with spinning threads, whose CPU per input overstates what the model costs
    a worker (the SST-2 model: 1.60-1.67 against 1.31-1.40 ms an input), so worker CPU minus that
    understated the HTTP path."""
    from bertserve.runtime import Pipeline
    from service.settings import ServiceSettings

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        settings = ServiceSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    pipe = Pipeline.from_artifact(path, card, threads=settings.intra_op_threads(), spinning=settings.ort_spinning)
    pipe.predict(texts[:32])
    best = float("inf")
    for _ in range(2):
        c0 = time.process_time()
        one_pass(pipe, texts)
        best = min(best, time.process_time() - c0)
    return 1000 * best / len(texts)


LUA = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function init(args) counter = math.random(#bodies) end
function request()
  counter = counter %% #bodies + 1
  return wrk.format(nil, "%s", nil, bodies[counter])
end
"""


def serve(name: str, env: dict[str, str], logs: Path, serve_dir: str) -> tuple[subprocess.Popen, int, str, list[int]]:
    """`bentoml serve` of the checkout at `serve_dir` on a free port, ready: (process, port, its URL,
    the pids whose CPU is measured: the server and its workers)."""
    port = free_port()
    server = start(name, [*SERVE, "--port", str(port)], env, port, logs, {}, cwd=Path(serve_dir))
    return server, port, f"http://127.0.0.1:{port}", [server.pid, *worker_pids(server.pid)]


def batching_off(args: argparse.Namespace, env: dict[str, str], bodies: Path, logs: Path) -> dict[str, float]:
    """The same model served again with batching off, under the same wrk load (warm-up, then
    `--seconds`): requests/s, p50/p99 and the forward passes it ran."""
    server, _, url, watch = serve("bertserve-unbatched", env, logs, args.serve_dir)
    try:
        http = measured_load(url, args, bodies, watch)
    finally:
        stop(server)
    http.pop("raw")
    return http


def measured_load(url: str, args: argparse.Namespace, bodies: Path, watch: list[int],
                  on_start: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """wrk for 3 s (warm-up), `on_start()`, then wrk for `--seconds`: its figures, and the forward
    passes, texts per pass, forward-pass CPU and share of the computed tokens that was padding, as
    the workers counted them meanwhile (from /metrics)."""
    run_wrk(url, args.route, bodies, args.connections, 3, args.threads, watch)
    on_start()
    passes0, windows0, forward_cpu0, padding0, tokens0 = batch_stats(url)
    http: dict[str, Any] = run_wrk(url, args.route, bodies, args.connections, args.seconds, args.threads, watch)
    passes1, windows1, forward_cpu1, padding1, tokens1 = batch_stats(url)
    http["forward_passes"] = passes1 - passes0
    http["mean_batch"] = (windows1 - windows0) / max(1.0, passes1 - passes0)
    http["forward_cpu_s"] = forward_cpu1 - forward_cpu0
    http["padding_share"] = (padding1 - padding0) / max(1.0, tokens1 - tokens0)
    return http


def metric_sums(url: str, names: Sequence[str]) -> dict[str, float]:
    """Each named sample summed over its series (models, workers), from the service's /metrics; a
    name may pick one label value, as `name{label=value}`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums = dict.fromkeys(names, 0.0)
    wanted = {name.partition("{")[0] for name in names}  # the samples worth looking at
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            if sample.name in sums:
                sums[sample.name] += sample.value
            for label, value in sample.labels.items():
                picked = f"{sample.name}{{{label}={value}}}"
                if picked in sums:
                    sums[picked] += sample.value
    return sums


BATCH_STATS = ("bertserve_batch_size_count", "bertserve_batch_size_sum", "bertserve_forward_cpu_seconds_total",
               "bertserve_tokens_total{kind=padding}", "bertserve_tokens_total")


def batch_stats(url: str) -> tuple[float, ...]:
    """(forward passes, windows run, CPU seconds of the threads that ran them, padding tokens, tokens
    computed) so far, from /metrics."""
    sums = metric_sums(url, BATCH_STATS)
    return tuple(sums[name] for name in BATCH_STATS)


SHADOW = ("bertserve_shadow_samples_total", "bertserve_shadow_agreements_total", "bertserve_shadow_dropped_total")


def shadow_stats(url: str) -> dict[str, float] | None:
    """Shadow parity's counts over the whole run (BERTSERVE_SHADOW_RATE > 0), None when off."""
    sums = metric_sums(url, SHADOW)
    samples, agreements, dropped = (sums[name] for name in SHADOW)
    if not samples and not dropped:
        return None
    return {"samples": samples, "agreements": agreements, "dropped": dropped,
            "agreement": agreements / samples if samples else float("nan")}


def parse_wrk(out: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for q in ("50", "99"):
        found = re.search(rf"^\s+{q}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{q}_ms"] = ms(found.group(1)) if found else float("nan")
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    result["socket_errors"] = sum(map(int, socket_errors.groups())) if socket_errors else 0
    return result


def run_wrk(url: str, route: str, bodies: Path, connections: int, seconds: int, threads: int,
            watch: list[int]) -> dict[str, float]:
    script = bodies.with_suffix(".lua")
    script.write_text(LUA % (bodies, route))
    before = {pid: cpu_seconds(pid) for pid in watch}
    # the workers' event-loop threads, read after their processes here and before them below, so
    # that their share never exceeds what the processes used
    loops_before = {pid: cpu_seconds(pid, main_thread=True) for pid in watch[1:]}
    proc = subprocess.Popen(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "10s",
                             "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wrk_cpu0 = cpu_seconds(proc.pid)
    last = wrk_cpu0
    while proc.poll() is None:  # wrk's own CPU, read while it lives
        try:
            last = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    out = proc.communicate()[0]
    result = parse_wrk(out)
    loops = sum(cpu_seconds(pid, main_thread=True) - loops_before[pid] for pid in watch[1:])
    used = [cpu_seconds(pid) - before[pid] for pid in watch]
    result["worker_cpu_s"] = sum(used)
    result["event_loop_cpu_s"] = loops
    # each process's share of a core (the server process first): an idle worker shows here
    result["cpu_share_by_process"] = [round(u / seconds, 2) for u in used]  # type: ignore[assignment]
    result["wrk_cpu_share_of_a_core"] = (last - wrk_cpu0) / seconds
    result["raw"] = out  # type: ignore[assignment]
    return result


async def paced(host: str, port: int, route: str, bodies: list[str], rate: float, seconds: float,
                connections: int = 64) -> dict[str, float]:
    """Poisson arrivals at `rate` requests/s on keep-alive connections: latency percentiles."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    failures = 0
    rng = random.Random(0)

    async def one(body: bytes) -> None:
        nonlocal failures
        reader, writer = await pool.get()
        started = time.perf_counter()
        try:
            writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (route.encode(), len(body), body))
            status = await reader.readline()
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                close |= name.lower() == b"connection" and value.strip().lower() == b"close"
            await reader.readexactly(length)
            latencies.append(1000 * (time.perf_counter() - started))
            failures += not status.startswith(b"HTTP/1.1 200")
            if close:  # the server ends this connection (BERTSERVE_KEEPALIVE_REQUESTS): open another
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        finally:
            pool.put_nowait((reader, writer))

    tasks_: list[asyncio.Task[None]] = []
    cpu0 = time.process_time()
    due = time.perf_counter()
    end = due + seconds
    i = 0
    while due < end:
        due += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks_.append(asyncio.create_task(one(bodies[i % len(bodies)].encode())))
        i += 1
    await asyncio.gather(*tasks_)
    client_cpu_s = time.process_time() - cpu0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"rate": rate, "requests": len(latencies), "failures": failures, "p50_ms": pct(0.5), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "client_cpu_share_of_a_core": client_cpu_s / seconds}


SPY_RATE = 200  # py-spy samples per second and thread


def profile_breakdown(raw: Path) -> dict[str, float]:
    """Seconds of Python thread time per stage (py-spy's collapsed stacks, 'frame;... count', each
    sample 1/SPY_RATE s of one thread; onnxruntime's own native threads are not seen). py-spy also
    counts a thread that waits for the GIL or for a core (here a worker's event loop was sampled
    for about twice its CPU time): this says where the threads' time goes, not their CPU; for that,
    the report's CPU split."""
    counts: dict[str, float] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        # the innermost frame that matches a stage names it (stages tried in their order per frame)
        stage = next((name for f in reversed(frames[-6:]) for name, pattern in STAGES if re.search(pattern, f)),
                     "other")
        counts[stage] = counts.get(stage, 0) + int(n)
    return {k: v / SPY_RATE for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--route", default="/classify", help="a text route: /classify, /embed, /v1/embeddings, /ner")
    p.add_argument("--model", help="store tag to serve (default: the route's task's latest published)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (one is plenty at these rates)")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--limit", type=int, help="only the first N inputs")
    p.add_argument("--half-peak", action="store_true", help="also Poisson arrivals at half the measured peak")
    p.add_argument("--paced-rate", type=float, help="Poisson arrivals at this rate instead of half the peak (to "
                   "compare two runs, e.g. shadowing off and on, at the same rate); implies --half-peak")
    p.add_argument("--profile", action="store_true", help="py-spy the worker during the wrk run")
    p.add_argument("--compare-batching", action="store_true",
                   help="then serve the model again with batching off (BERTSERVE_BATCHING=false) under the same wrk "
                        "load, and print batching on against off (on a GPU, batching is where throughput comes from)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    p.add_argument("--serve-dir", default=str(ROOT),
                   help="the checkout whose service to serve (e.g. a worktree of an earlier commit, for before/after)")
    p.add_argument("--output-dir", default=str(ROOT / "reports" / "bench-http"))
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian/Ubuntu)")

    from bertserve.store import resolve
    from export.bench import machine

    task, _, texts = route_inputs(args.route, args.limit)
    found = resolve(task, args.model)
    if found is None:
        raise SystemExit(f"no {task} model is published: `bertserve quickstart` or pass --model")
    tag, path, card = found
    n = args.texts_per_request
    groups = [texts[i : i + n] for i in range(0, len(texts) - n + 1, n)]
    print(f"{args.route}: {tag} ({card.variant}), {len(texts)} inputs, {n} per request", file=sys.stderr)

    model = offline(path, card, texts, 3, args.seconds)  # again after the HTTP run: the better best counts
    sustained = [model.pop("sustained_inputs_per_s")]
    print(f"offline: {model['inputs_per_s']:.1f} inputs/s, {model['cpu_ms_per_input']:.2f} ms CPU each; "
          f"over {args.seconds} s: {sustained[0]:.1f} inputs/s", file=sys.stderr)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bertserve-bench-http-") as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        lines = [json.dumps(body_of(task, args.route, g)) for g in groups]
        bodies.write_text("\n".join(lines) + "\n")
        env = {"BERTSERVE_MODELS": f"{task}={tag}", **dict(e.split("=", 1) for e in args.env)}
        server, port, url, watch = serve("bertserve", env, Path(tmp), args.serve_dir)
        try:
            spy: subprocess.Popen[bytes] | None = None
            spy_out = Path(tmp) / "profile.txt"

            def profile() -> None:  # py-spy on the last worker, for the measured run only
                nonlocal spy
                spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
                spy = subprocess.Popen([spy_bin, "record", "--format", "raw", "-r", str(SPY_RATE), "-d",
                                        str(args.seconds), "-o", str(spy_out), "--pid", str(watch[-1])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

            http = measured_load(url, args, bodies, watch, profile if args.profile else lambda: None)
            if spy is not None:
                spy.wait(60)
            rss = resident_mb(server.pid)
            half = None
            if args.half_peak or args.paced_rate:
                half = asyncio.run(paced("127.0.0.1", port, args.route, lines,
                                         args.paced_rate or http["requests_per_s"] / 2, args.seconds))
            time.sleep(2 if args.env else 0)  # the last shadow samples (a background thread) land
            shadow = shadow_stats(url)
        finally:
            stop(server)
        unbatched = None
        if args.compare_batching:
            unbatched = batching_off(args, {**env, "BERTSERVE_BATCHING": "false"}, bodies, Path(tmp))
        breakdown = None
        if args.profile and spy_out.is_file():
            breakdown = profile_breakdown(spy_out)
            shutil.copy(spy_out, out / f"profile-{args.route.strip('/').replace('/', '_')}.txt")

    again = offline(path, card, texts, 2, args.seconds)
    sustained.append(again.pop("sustained_inputs_per_s"))
    print(f"offline again: {again['inputs_per_s']:.1f} inputs/s; over {args.seconds} s: {sustained[1]:.1f}",
          file=sys.stderr)
    if again["inputs_per_s"] > model["inputs_per_s"]:
        model = again
    model["inputs_per_s"], model["rate_from"] = best_offline_rate(model["inputs_per_s"], sustained)  # type: ignore[assignment]
    model["sustained_inputs_per_s"] = sustained  # type: ignore[assignment]
    model["worker_cpu_ms_per_input"] = worker_model_cpu(path, card, texts, env)
    raw = http.pop("raw")
    inputs_per_s = http["requests_per_s"] * n
    cpu_per_request_ms = 1000 * http["worker_cpu_s"] / max(1, http["requests"])
    forward_per_request_ms = 1000 * http["forward_cpu_s"] / max(1, http["requests"])
    summary = {
        "route": args.route, "model": tag, "variant": card.variant, "texts_per_request": n,
        "connections": args.connections, "seconds": args.seconds, "machine": machine(),
        "offline": model, "http": http, "http_inputs_per_s": inputs_per_s,
        "ratio": inputs_per_s / model["inputs_per_s"],
        "ratio_sustained": inputs_per_s / (sum(sustained) / len(sustained)),
        "worker_cpu_ms_per_request": cpu_per_request_ms,
        "cpu_ms_per_request_outside_model": cpu_per_request_ms - n * model["worker_cpu_ms_per_input"],
        # the same from the workers' own count of their forward passes' thread CPU, in this run
        "forward_cpu_ms_per_request": forward_per_request_ms,
        "cpu_ms_per_request_outside_forward": cpu_per_request_ms - forward_per_request_ms,
        # of which the workers' event-loop threads: HTTP, validation, tokenizing, post-processing, metrics
        "event_loop_cpu_ms_per_request": 1000 * http["event_loop_cpu_s"] / max(1, http["requests"]),
        "server_rss_mb": round(rss), "half_peak": half, "profile_seconds": breakdown, "shadow": shadow,
        "batching_off": unbatched,
        "batching_gain": http["requests_per_s"] / unbatched["requests_per_s"] if unbatched else None,
        "env": args.env,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if breakdown:
        summary["profile_us_per_request"] = {k: round(1e6 * v / max(1, http["requests"]), 1)
                                             for k, v in breakdown.items()}
    stem = out / f"{args.route.strip('/').replace('/', '_')}-{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    stem.with_suffix(".wrk.txt").write_text(raw)
    print(render(summary))
    print(f"reports: {stem}.json, {stem}.wrk.txt")
    return 0


def render(s: dict[str, Any]) -> str:
    h = s["http"]
    lines = [
        f"bench-http {s['route']}: {s['model']} ({s['variant']}), {s['texts_per_request']} text(s) per request, "
        f"{s['connections']} connections, {s['seconds']} s; {s['machine']['cpu']}, {s['machine']['cores']} cores"
        + (f"; server env {' '.join(s['env'])}" if s.get("env") else ""),
        f"offline (runtime, batch 32): {s['offline']['inputs_per_s']:.1f} inputs/s ({s['offline']['rate_from']}), "
        f"{s['offline']['cpu_ms_per_input']:.2f} ms CPU per input (the best timed pass)",
        f"HTTP (wrk): {h['requests_per_s']:.1f} requests/s = {s['http_inputs_per_s']:.1f} inputs/s, "
        f"p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, non-2xx {h['non_2xx']}, socket errors {h['socket_errors']}",
        f"offline over {s['seconds']} s, before and after the HTTP run: "
        f"{', '.join(f'{x:.1f}' for x in s['offline']['sustained_inputs_per_s'])} inputs/s; "
        f"ratio HTTP / their mean: {s['ratio_sustained']:.2f}",
        f"ratio HTTP / offline: {s['ratio']:.2f}; {h['forward_passes']:.0f} forward passes, "
        f"{h['mean_batch']:.1f} texts each on average, {h['padding_share']:.1%} of the tokens computed padding",
        f"worker CPU per request: {s['worker_cpu_ms_per_request']:.2f} ms, outside the model "
        f"{s['cpu_ms_per_request_outside_model']:.2f} ms (the model {s['offline']['worker_cpu_ms_per_input']:.2f} "
        f"ms of CPU per input as a worker runs it); each process's share of a core "
        f"{', '.join(f'{x:.2f}' for x in h['cpu_share_by_process'])} (the server process first); wrk used {100 * h['wrk_cpu_share_of_a_core']:.0f} % of a core",
        f"measured in the workers (bertserve_forward_cpu_seconds_total, the forward passes' thread CPU): the model "
        f"{s['forward_cpu_ms_per_request']:.2f} ms of CPU per request, everything else {s['cpu_ms_per_request_outside_forward']:.2f} ms: "
        f"the workers' event-loop threads (HTTP, validation, tokenizing, post-processing, metrics) "
        f"{s['event_loop_cpu_ms_per_request']:.2f} ms, the rest (the batcher's thread around the forward passes, "
        f"the server process) {s['cpu_ms_per_request_outside_forward'] - s['event_loop_cpu_ms_per_request']:.2f} ms",
    ]
    if s.get("half_peak"):
        hp = s["half_peak"]
        lines.append(f"half peak ({hp['rate']:.1f} requests/s, Poisson): p50 {hp['p50_ms']:.1f} ms, "
                     f"p95 {hp['p95_ms']:.1f} ms, p99 {hp['p99_ms']:.1f} ms, failures {hp['failures']}; the client "
                     f"(Python asyncio) used {100 * hp.get('client_cpu_share_of_a_core', 0):.0f} % of a core")
    if s.get("batching_off"):
        off = s["batching_off"]
        lines.append(f"batching off (BERTSERVE_BATCHING=false), same load: {off['requests_per_s']:.1f} requests/s, "
                     f"p50 {off['p50_ms']:.1f} ms, p99 {off['p99_ms']:.1f} ms, non-2xx {off['non_2xx']}, "
                     f"{off['mean_batch']:.1f} texts per forward pass; batching on / off: {s['batching_gain']:.2f}x")
    if s.get("shadow"):
        sh = s["shadow"]
        lines.append(f"shadow parity: {sh['samples']:.0f} inputs re-run on fp32, agreement {sh['agreement']:.4f}, "
                     f"{sh['dropped']:.0f} samples dropped (queue full)")
    if s.get("profile_us_per_request"):
        lines.append("where the worker's Python threads spend their time, per request (py-spy: time, waiting for "
                     "the GIL or a core included, not CPU; onnxruntime's own worker threads not included):")
        lines += [f"  {k:<28} {v:8.1f} us" for k, v in s["profile_us_per_request"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
