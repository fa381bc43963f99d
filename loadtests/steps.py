"""Stepped load test: bertserve against what users would run instead, in one run (`make loadtest`).

    python loadtests/steps.py --host http://localhost:3000 [--users 1,4,16,32,64] [--step-time 20]
        [--endpoints /classify,/embed] [--compare nobatch,baseline] [--slo-p95-ms 50]

For each endpoint the running service serves, Locust (headless, closed loop: each user sends its
next request when the previous is answered) runs each user count for --step-time seconds against:
- `bertserve`: the service at --host;
- `nobatch`: the same service and models with adaptive batching off (started here, BERTSERVE_BATCHING=false);
- `baseline`: a `transformers` pipeline behind FastAPI (loadtests/baseline_server.py, /classify only).
Then, per endpoint, bertserve once more at half its peak throughput (32 users, each paced), the
operating point its latency goal is judged at. Padding waste comes from the service's own metrics.

Writes, under --out (default reports/loadtest/<time>): steps.csv, report.md, latency.png and
summary.json. With --slo-p95-ms N it exits 1 when bertserve's p95 at half peak is over N ms on any
endpoint. Locust runs on the same machine as the service and takes CPU from it; the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import InputError, publish, read_stats  # noqa: E402

from bertserve.registry import tasks  # noqa: E402

# every registered route -> its task (the routes whose load test a served model makes possible)
ENDPOINT_TASK = {route.path: spec.name for spec in tasks().values() for route in spec.routes}
BASELINE_ENDPOINTS = ("/classify",)  # loadtests/baseline_server.py: a transformers text-classification server
HALF_PEAK_USERS = 32
# Idle keep-alive connections live longer on the server than on any client or load balancer (60 s
# is the common idle timeout), so the client side always closes them first: with uvicorn's 5 s, a
# request sent just as the server closes an idle connection is lost ("connection closed").
KEEP_ALIVE_S = 75
SERVE = [sys.executable, "-m", "bentoml", "serve", "service:BertServe", "--timeout-keep-alive", str(KEEP_ALIVE_S)]
DEFAULT_TEXTS = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"


@dataclass
class Step:
    system: str
    endpoint: str
    users: int
    mode: str  # "closed" (users send back to back) or "half-peak" (paced users)
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s")


def side_home(out: Path) -> str:
    """A BentoML home for a second service on this machine that sees the same model store.

    `bentoml serve` empties its home's Prometheus directory when it starts: a second service on
    the same home would wipe the first one's metrics (the padding figures read from it)."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").resolve()
    side = out / "nobatch-bentoml-home"
    side.mkdir(exist_ok=True)
    if not (side / "models").exists():
        (side / "models").symlink_to(home / "models")
    return str(side)


def resident_mb(pid: int) -> float:
    """Resident memory of a process and all its children (BentoML's workers), in MB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 1e6


LOG_TAIL_LINES = 20  # of a server's log shown when it did not get ready


def start(name: str, cmd: list[str], env: dict[str, str], port: int, logs: Path,
          startup: dict[str, dict[str, float]], cwd: Path = ROOT) -> subprocess.Popen:
    path = logs / f"{name}.log"
    log = path.open("w")
    process = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        seconds = wait_ready(f"http://127.0.0.1:{port}", process)
    except BaseException as failed:  # not ready, or interrupted: stop it and its workers
        stop(process)
        log.close()
        if not isinstance(failed, SystemExit):
            raise
        tail = "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise SystemExit(f"{failed}; the end of its log ({path}):\n{tail}") from None
    startup[name] = {"ready_s": round(seconds, 1), "rss_mb": round(resident_mb(process.pid))}
    print(f"{name}: ready on port {port} after {seconds:.1f} s, {startup[name]['rss_mb']} MB resident", file=sys.stderr)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run_step(host: str, endpoint: str, users: int, seconds: int, prefix: Path, env: dict[str, str],
             user_rate: float | None = None) -> dict[str, Any]:
    step_env = {**os.environ, **env, "LOADTEST_ENDPOINTS": endpoint}
    if user_rate:
        step_env["LOADTEST_USER_RATE"] = f"{user_rate:.4f}"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
           "--host", host, "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--only-summary",
           "--csv", str(prefix), "--loglevel", "WARNING"]
    with open(f"{prefix}.log", "w") as log:
        subprocess.run(cmd, env=step_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       timeout=seconds + 120, check=False)
    try:
        rows, _ = read_stats(str(prefix))
    except InputError as exc:
        raise SystemExit(f"locust wrote no statistics for {endpoint} at {users} users ({exc}); "
                         f"see {prefix}.log") from None
    row = rows[0]
    return {"requests": row.requests, "failures": row.failures, "rps": row.rps,
            "p50_ms": row.p50_ms, "p95_ms": row.p95_ms, "p99_ms": row.p99_ms}


def token_counts(host: str) -> dict[tuple[str, str], float]:
    """bertserve_tokens_total per (task, kind) from the service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    text = httpx.get(f"{host}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bertserve_tokens_total":
                key = (sample.labels.get("task", ""), sample.labels.get("kind", ""))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def padding_waste(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], task: str) -> float | None:
    text = after.get((task, "text"), 0) - before.get((task, "text"), 0)
    padding = after.get((task, "padding"), 0) - before.get((task, "padding"), 0)
    return None if text + padding <= 0 else padding / (text + padding)


def baseline_model(info: dict[str, Any], given: str | None, work: Path) -> str:
    """A PyTorch classification directory: --baseline-model, else the served model's training
    directory when it is on this machine, else the default encoder with an untrained head."""
    if given:
        return given
    task = ENDPOINT_TASK[BASELINE_ENDPOINTS[0]]
    default = (info.get("defaults") or {}).get(task, task)
    tag = info["models"].get(default, {}).get("tag")
    if tag:
        try:
            from bertserve.store import resolve

            found = resolve(task, tag)
            source = found and found[2].training.get("export", {}).get("source")
            if source and (Path(source) / "config.json").is_file():
                return source
        except Exception as exc:  # the store may be elsewhere (another BENTOML_HOME)
            print(f"baseline: cannot find {tag}'s training directory ({exc})", file=sys.stderr)
    from export.bench import scratch_model
    from training.config import default_base_model

    print("baseline: the default encoder with an untrained head (same speed as a trained one)", file=sys.stderr)
    return str(scratch_model(task, default_base_model(), work / "baseline-model"))


def plot(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = sorted({s.endpoint for s in steps}, key=list(ENDPOINT_TASK).index)
    fig, axes = plt.subplots(1, len(endpoints), figsize=(5 * len(endpoints), 4), squeeze=False)
    colors = {"bertserve": "tab:blue", "nobatch": "tab:orange", "baseline": "tab:red"}
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for system, color in colors.items():
            rows = sorted((s for s in steps if s.system == system and s.endpoint == endpoint and s.mode == "closed"
                           and s.p95_ms is not None), key=lambda s: s.users)
            if not rows:
                continue
            x = [s.rps for s in rows]
            ax.plot(x, [s.p95_ms for s in rows], "-o", color=color, label=f"{system} p95")
            ax.plot(x, [s.p50_ms for s in rows], "--", color=color, alpha=0.6, label=f"{system} p50")
            for s in rows:
                ax.annotate(str(s.users), (s.rps, s.p95_ms), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"POST {endpoint}")
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("latency against throughput; labels: concurrent users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(summary: dict[str, Any], steps: list[Step]) -> str:
    lines = [f"# Load test, {summary['created_at']}", "",
             f"Machine: {summary['machine']}. Locust runs on the same machine and takes CPU from the servers.",
             f"Steps of {summary['step_time_s']} s, closed loop; texts: {summary['texts']}, "
             f"{summary['texts_per_request']} per request.", ""]
    for endpoint in summary["endpoints"]:
        lines += [f"## POST {endpoint}", "",
                  "| system | users | req/s | p50 ms | p95 ms | p99 ms | failures |", "|---|--:|--:|--:|--:|--:|--:|"]
        for s in steps:
            if s.endpoint == endpoint:
                users = f"{s.users} (half peak)" if s.mode == "half-peak" else str(s.users)
                lines.append(f"| {s.system} | {users} | {s.rps:.1f} | {fmt(s.p50_ms)} | {fmt(s.p95_ms)} "
                             f"| {fmt(s.p99_ms)} | {s.failures}/{s.requests} |")
        info = summary["per_endpoint"][endpoint]
        lines += ["", f"Peak: {info['peak_rps']:.1f} req/s; at half peak p95 {fmt(info.get('half_peak_p95_ms'))} ms"
                  + (f"; padding waste {100 * info['padding_waste']:.1f} %" if info.get("padding_waste") is not None
                     else "") + "."]
        for other, ratio in info.get("ratio_at_32_users", {}).items():
            lines.append(f"At 32 users bertserve serves {ratio:.2f}x the requests/s of {other}.")
        lines.append("")
    if summary.get("slo"):
        slo = summary["slo"]
        lines.append(f"SLO p95 at half peak <= {slo['p95_ms']:g} ms: {'met' if not slo['breaches'] else 'missed'}.")
        lines += [f"- {b}" for b in slo["breaches"]]
    for name, item in summary.get("startup", {}).items():
        lines.append(f"{name} server: ready {item['ready_s']} s after start, {item['rss_mb']:.0f} MB resident.")
    lines += ["", "![latency against throughput](latency.png)", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="http://localhost:3000", help="the running bertserve service")
    p.add_argument("--users", default="1,4,16,32,64", help="user counts, one step each")
    p.add_argument("--step-time", type=int, default=20, help="seconds per step")
    p.add_argument("--endpoints", help="comma list (default: every endpoint the service serves)")
    p.add_argument("--compare", default="nobatch,baseline", help="systems to compare with (or 'none')")
    p.add_argument("--baseline-model", help="classification directory for the baseline server")
    p.add_argument("--texts-file", default=str(DEFAULT_TEXTS) if DEFAULT_TEXTS.is_file() else None,
                   help="real texts for /classify, /embed, /similarity (default: SST-2 dev when present)")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--out", help="report folder (default reports/loadtest/<time>)")
    p.add_argument("--slo-p95-ms", type=float, help="exit 1 if bertserve's p95 at half peak is over this")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `kill` (SIGTERM) stops the run like Ctrl-C: the servers started here are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    host = args.host.rstrip("/")
    out = Path(args.out or ROOT / "reports" / "loadtest" / time.strftime("%Y%m%d-%H%M%S"))
    (out / "raw").mkdir(parents=True, exist_ok=True)
    try:
        info = httpx.get(f"{host}/info", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SystemExit(f"{host}/info: {exc}; start the service first (make serve)") from None
    served_tasks = {m["task"] for m in info["models"].values()}
    served = [e for e, task in ENDPOINT_TASK.items() if task in served_tasks]
    endpoints = [e.strip() for e in args.endpoints.split(",")] if args.endpoints else served
    missing = sorted(set(endpoints) - set(served))
    if missing:
        raise SystemExit(f"the service at {host} serves no model for {missing}")
    users = [int(u) for u in args.users.split(",")]
    compare = [] if args.compare == "none" else [c.strip() for c in args.compare.split(",")]
    env = {"LOADTEST_TEXTS_PER_REQUEST": str(args.texts_per_request)}
    if args.texts_file:
        env["LOADTEST_TEXTS_FILE"] = args.texts_file

    systems: dict[str, str] = {"bertserve": host}
    processes: list[subprocess.Popen] = []
    startup: dict[str, dict[str, float]] = {}
    try:
        if "nobatch" in compare:
            port = free_port()
            # the same models under the same names, batching off
            models = ",".join(f"{name}={m['tag']}" for name, m in info["models"].items())
            processes.append(start("nobatch", [*SERVE, "--port", str(port)],
                                   {"BERTSERVE_MODELS": models, "BERTSERVE_BATCHING": "false",
                                    "BENTOML_HOME": side_home(out)},
                                   port, out, startup))
            systems["nobatch"] = f"http://127.0.0.1:{port}"
        if "baseline" in compare and any(e in BASELINE_ENDPOINTS for e in endpoints):
            port = free_port()
            model = baseline_model(info, args.baseline_model, out)
            processes.append(start("baseline", [sys.executable, "-m", "uvicorn", "loadtests.baseline_server:app",
                                                "--port", str(port), "--log-level", "warning"],
                                   {"BASELINE_MODEL": model}, port, out, startup))
            systems["baseline"] = f"http://127.0.0.1:{port}"

        steps: list[Step] = []
        per_endpoint: dict[str, dict[str, Any]] = {}
        for endpoint in endpoints:
            before = token_counts(host)
            for system, url in systems.items():
                if system == "baseline" and endpoint not in BASELINE_ENDPOINTS:
                    continue
                for n in users:
                    prefix = out / "raw" / f"{system}{endpoint.replace('/', '_')}_{n}"
                    stats = run_step(url, endpoint, n, args.step_time, prefix, env)
                    steps.append(Step(system, endpoint, n, "closed", **stats))
                    print(f"{system:9s} {endpoint:11s} {n:3d} users: {stats['rps']:7.1f} req/s, "
                          f"p95 {fmt(stats['p95_ms'])} ms, {stats['failures']} failures", file=sys.stderr)
            after = token_counts(host)
            mine = [s for s in steps if s.system == "bertserve" and s.endpoint == endpoint]
            peak = max(s.rps for s in mine)
            prefix = out / "raw" / f"bertserve{endpoint.replace('/', '_')}_halfpeak"
            stats = run_step(host, endpoint, HALF_PEAK_USERS, args.step_time, prefix, env,
                             user_rate=peak / 2 / HALF_PEAK_USERS)
            steps.append(Step("bertserve", endpoint, HALF_PEAK_USERS, "half-peak", **stats))
            ratios = {}
            at32 = {s.system: s.rps for s in steps if s.endpoint == endpoint and s.users == 32 and s.mode == "closed"}
            for other in ("nobatch", "baseline"):
                if other in at32 and "bertserve" in at32 and at32[other] > 0:
                    ratios[other] = round(at32["bertserve"] / at32[other], 2)
            per_endpoint[endpoint] = {
                "peak_rps": peak, "half_peak_rps": stats["rps"], "half_peak_p95_ms": stats["p95_ms"],
                "padding_waste": padding_waste(before, after, ENDPOINT_TASK[endpoint]),
                "ratio_at_32_users": ratios,
            }
    finally:
        for process in processes:
            stop(process)

    breaches = []
    if args.slo_p95_ms is not None:
        for endpoint, item in per_endpoint.items():
            p95 = item["half_peak_p95_ms"]
            if p95 is None or p95 > args.slo_p95_ms:
                breaches.append(f"POST {endpoint}: p95 {fmt(p95)} ms at half peak > {args.slo_p95_ms:g} ms")
    from export.bench import machine

    m = machine()
    summary = {
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{m['cpu']}, {m['cores']} cores",
        "host": host, "step_time_s": args.step_time, "users": users, "endpoints": endpoints,
        "systems": list(systems), "texts": args.texts_file or "generated", "texts_per_request": args.texts_per_request,
        "models": {name: m["tag"] for name, m in info["models"].items()},
        "per_endpoint": per_endpoint,
        # start to /readyz and resident memory of the servers started here (nobatch: the same
        # service and models as --host, batching off)
        "startup": startup,
        "slo": {"p95_ms": args.slo_p95_ms, "breaches": breaches} if args.slo_p95_ms is not None else None,
    }
    with (out / "steps.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(steps[0])))
        writer.writeheader()
        writer.writerows(asdict(s) for s in steps)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(steps, out / "latency.png")
    return publish(render(summary, steps), out / "report.md", breaches)


if __name__ == "__main__":
    sys.exit(main())
