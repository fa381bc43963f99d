"""Overload and soak runs: what the service does past its peak, and whether it leaks over time.

    python loadtests/stress.py overload [--endpoint /classify] [--factor 2] [--step-time 20]
    python loadtests/stress.py soak [--minutes 5] [--load 0.5] [--max-growth-mb 50]

Each starts `bentoml serve` with the published models on a free port (so it can read the server's
resident memory), or uses `--host URL` (overload only). Texts: SST-2's dev.tsv when
../shared/data is there, generated otherwise (`--texts-file`).

overload
    1. peak: closed loop at `--peak-users` (32) gives the peak rate R;
    2. before: R/2 offered by Poisson-paced users: the latency of a healthy service;
    3. overload: `--factor` x R (2) offered by enough paced users that the offered rate holds even
       while the service answers slowly: every status is counted; only 200, 429 (concurrency limit)
       and 503 (latency budget) are allowed, and the p95 of the accepted (200) requests is reported;
    4. after: R/2 again; the service must be ready and its p95 within 2x (or +20 ms) of `before`.
    Exit 1 when a status other than 200/429/503 came back or the service did not recover.

soak
    A steady `--load` x peak for `--minutes`, sampling the server's resident memory (all its
    processes) every `--sample-s`; growth = the mean of the last minute's samples minus the mean of
    the first minute after warm-up. Exit 1 when growth is over `--max-growth-mb`.

Reports (`--out`, default reports/<kind>/<time>): report.md, summary.json, and for soak
memory.csv and memory.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import publish
from steps import DEFAULT_TEXTS, ROOT, SERVE, free_port, resident_mb, run_step, start, stop

ACCEPTABLE_STATUSES = {"200", "429", "503"}
PACED_USER_RATE = 0.5  # requests/s per paced user in the overload phase: a 2 s gap covers slow answers


def phase(name: str, host: str, endpoint: str, users: int, seconds: int, out: Path, env: dict[str, str],
          user_rate: float | None = None) -> dict[str, Any]:
    prefix = out / "raw" / name
    status_file = out / "raw" / f"{name}_status.json"
    stats = run_step(host, endpoint, users, seconds, prefix, {**env, "LOADTEST_STATUS_FILE": str(status_file)},
                     user_rate=user_rate)
    statuses = json.loads(status_file.read_text()) if status_file.exists() else {}
    stats.update(name=name, users=users, seconds=seconds,
                 offered_rps=round(users * user_rate, 1) if user_rate else None, statuses=statuses,
                 accepted_rps=round(stats["rps"] * statuses.get("200", {}).get("count", 0)
                                    / max(1, sum(v["count"] for v in statuses.values())), 1))
    shown = ", ".join(f"{k}: {v['count']}" for k, v in statuses.items())
    print(f"{name:9s} {users:4d} users: {stats['rps']:7.1f} req/s ({stats['accepted_rps']} accepted), "
          f"p95 {stats['p95_ms']} ms; statuses {shown}", file=sys.stderr)
    return stats


def ready(host: str) -> bool:
    try:
        return httpx.get(f"{host}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def serve(out: Path, startup: dict[str, dict[str, float]], env: dict[str, str]) -> tuple[str, Any]:
    port = free_port()
    process = start("bertserve", [*SERVE, "--port", str(port)],
                    env, port, out, startup)
    return f"http://127.0.0.1:{port}", process


def overload(args: argparse.Namespace, host: str, out: Path, env: dict[str, str], pid: int | None) -> tuple[dict, str, list[str]]:
    peak = phase("peak", host, args.endpoint, args.peak_users, args.step_time, out, env)
    rate = peak["accepted_rps"]  # the peak of answered requests: 429s at the peak are not throughput
    if rate <= 0:
        raise SystemExit(f"no request succeeded at {args.peak_users} users; see {out / 'raw'}")
    half_users = args.peak_users
    before = phase("before", host, args.endpoint, half_users, args.step_time, out, env, user_rate=rate / 2 / half_users)
    users = max(args.peak_users, math.ceil(args.factor * rate / PACED_USER_RATE))
    rss_before = resident_mb(pid) if pid else None
    over = phase("overload", host, args.endpoint, users, args.step_time, out, env,
                 user_rate=args.factor * rate / users)
    rss_after = resident_mb(pid) if pid else None
    healthy = ready(host)
    after = phase("after", host, args.endpoint, half_users, args.step_time, out, env, user_rate=rate / 2 / half_users)
    unexpected = {k: v["count"] for k, v in over["statuses"].items() if k not in ACCEPTABLE_STATUSES}
    accepted = over["statuses"].get("200", {})
    limit = max(2 * (before["p95_ms"] or 0), (before["p95_ms"] or 0) + 20)
    recovered = healthy and after["p95_ms"] is not None and after["p95_ms"] <= limit and after["failures"] == 0
    problems = []
    if unexpected:
        problems.append(f"statuses other than 200/429/503 under overload: {unexpected}")
    if not recovered:
        problems.append(f"not recovered: ready={healthy}, p95 after {after['p95_ms']} ms (limit {limit:g} ms), "
                        f"{after['failures']} failures after")
    if args.accepted_p95_ms and (accepted.get("p95_ms") or 0) > args.accepted_p95_ms:
        problems.append(f"p95 of accepted requests {accepted.get('p95_ms')} ms > {args.accepted_p95_ms:g} ms")
    summary = {"peak_rps": rate, "factor": args.factor, "phases": [peak, before, over, after],
               "overload_statuses": {k: v["count"] for k, v in over["statuses"].items()},
               "accepted_p95_ms": accepted.get("p95_ms"), "accepted_p50_ms": accepted.get("p50_ms"),
               "ready_after": healthy, "recovered": recovered, "rss_mb": {"before": rss_before, "after": rss_after}}
    lines = [f"# Overload: POST {args.endpoint} at {args.factor:g}x its peak", "",
             f"Peak (closed loop, {args.peak_users} users): **{rate:.1f} req/s**. Overload: {over['offered_rps']} req/s "
             f"offered by {users} Poisson-paced users for {args.step_time} s.", "",
             "| phase | users | offered req/s | answered req/s | accepted req/s | statuses | p50 ms | p95 ms | p95 of 200s ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in summary["phases"]:
        st = ", ".join(f"{k}: {v['count']}" for k, v in p["statuses"].items())
        lines.append(f"| {p['name']} | {p['users']} | {p['offered_rps'] or 'closed loop'} | {p['rps']:.1f} | "
                     f"{p['accepted_rps']} | {st} | {p['p50_ms']} | {p['p95_ms']} | "
                     f"{p['statuses'].get('200', {}).get('p95_ms')} |")
    lines += ["", f"Ready right after the overload: **{healthy}**; recovered (p95 within 2x or +20 ms of before, "
              f"no failures): **{recovered}**."]
    if pid:
        lines.append(f"Resident memory of the server: {rss_before:.0f} MB before the overload, {rss_after:.0f} MB after.")
    return summary, "\n".join(lines) + "\n", problems


def soak(args: argparse.Namespace, host: str, out: Path, env: dict[str, str], pid: int) -> tuple[dict, str, list[str]]:
    peak = phase("peak", host, args.endpoint, args.peak_users, min(args.step_time, 15), out, env)
    rate = args.load * peak["accepted_rps"]
    seconds = int(args.minutes * 60)
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not done.is_set():
            samples.append((round(time.monotonic() - t0, 1), round(resident_mb(pid), 1)))
            done.wait(args.sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        steady = phase("soak", host, args.endpoint, args.peak_users, seconds, out, env,
                       user_rate=rate / args.peak_users)
    finally:
        done.set()
        sampler.join()
    warm = [m for t, m in samples if args.warmup_s <= t < args.warmup_s + 60]
    last = [m for t, m in samples if t >= samples[-1][0] - 60]
    growth = statistics.mean(last) - statistics.mean(warm) if warm and last else float("nan")
    problems = [] if growth <= args.max_growth_mb else [
        f"resident memory grew {growth:.1f} MB after warm-up (limit {args.max_growth_mb:g} MB)"]
    with (out / "memory.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "rss_mb"])
        writer.writerows(samples)
    plot_memory(samples, args.warmup_s, out / "memory.png")
    summary = {"peak_rps": peak["accepted_rps"], "load": args.load, "offered_rps": round(rate, 1), "seconds": seconds,
               "requests": steady["requests"], "failures": steady["failures"], "p95_ms": steady["p95_ms"],
               "statuses": {k: v["count"] for k, v in steady["statuses"].items()},
               "rss_mb": {"start": samples[0][1], "after_warmup": round(statistics.mean(warm), 1) if warm else None,
                          "end": round(statistics.mean(last), 1), "max": max(m for _, m in samples)},
               "growth_mb": round(growth, 1), "max_growth_mb": args.max_growth_mb}
    text = (f"# Soak: POST {args.endpoint} for {args.minutes:g} min at {args.load:g}x peak\n\n"
            f"{steady['requests']} requests at {steady['rps']:.1f} req/s (offered {rate:.1f}), "
            f"{steady['failures']} failures, p95 {steady['p95_ms']} ms.\n\n"
            f"Resident memory of the server (all processes): {samples[0][1]:.0f} MB at the start, "
            f"{summary['rss_mb']['after_warmup']} MB in the first minute after a {args.warmup_s:g} s warm-up, "
            f"{summary['rss_mb']['end']} MB in the last minute, max {summary['rss_mb']['max']} MB: "
            f"**growth {growth:+.1f} MB** (limit {args.max_growth_mb:g} MB).\n\n![memory](memory.png)\n")
    return summary, text, problems


def plot_memory(samples: list[tuple[float, float]], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t / 60 for t, _ in samples], [m for _, m in samples], marker=".", linewidth=1)
    ax.axvline(warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory, MB")
    ax.set_title("bertserve under steady load")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["overload", "soak"])
    p.add_argument("--host", help="a running service (overload only; default: start one here)")
    p.add_argument("--endpoint", default="/classify")
    p.add_argument("--peak-users", type=int, default=32)
    p.add_argument("--step-time", type=int, default=20, help="seconds per overload phase")
    p.add_argument("--factor", type=float, default=2.0, help="overload: offered load as a multiple of the peak")
    p.add_argument("--accepted-p95-ms", type=float, help="overload: exit 1 if accepted requests' p95 is over this")
    p.add_argument("--minutes", type=float, default=5.0, help="soak: duration")
    p.add_argument("--load", type=float, default=0.5, help="soak: offered load as a fraction of the peak")
    p.add_argument("--warmup-s", type=float, default=60.0, help="soak: memory before this is warm-up")
    p.add_argument("--sample-s", type=float, default=5.0, help="soak: memory sampling interval")
    p.add_argument("--max-growth-mb", type=float, default=50.0)
    p.add_argument("--texts-file", default=str(DEFAULT_TEXTS) if DEFAULT_TEXTS.exists() else None)
    p.add_argument("--out", help="report folder (default reports/<kind>/<time>)")
    args = p.parse_args(argv)
    if args.kind == "soak" and args.host:
        p.error("soak starts its own server, to read its memory: leave --host out")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server started here too
    out = Path(args.out or ROOT / "reports" / args.kind / time.strftime("%Y%m%d-%H%M%S"))
    (out / "raw").mkdir(parents=True, exist_ok=True)
    env = {"LOADTEST_TEXTS_PER_REQUEST": "1"}
    if args.texts_file:
        env["LOADTEST_TEXTS_FILE"] = args.texts_file
    startup: dict[str, dict[str, float]] = {}
    process = None
    try:
        if args.host:
            host, pid = args.host.rstrip("/"), None
        else:
            host, process = serve(out, startup, dict(os.environ))
            pid = process.pid
        run = overload if args.kind == "overload" else soak
        summary, text, problems = run(args, host, out, env, pid)
    finally:
        if process is not None:
            stop(process)
    from export.bench import machine

    m = machine()
    summary.update(kind=args.kind, endpoint=args.endpoint, created_at=time.strftime("%Y-%m-%d %H:%M:%S"),
                   machine=f"{m['cpu']}, {m['cores']} cores", startup=startup, problems=problems)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return publish(text, out / "report.md", problems)


if __name__ == "__main__":
    sys.exit(main())
