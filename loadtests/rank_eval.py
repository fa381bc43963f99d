"""Answer-sentence ranking through a running service, and /rerank under load.

    # MRR@10 / Recall@1 of each method on the same questions (rows from `bertserve data qnli`)
    python loadtests/rank_eval.py rank --url URL --data qnli-dev.jsonl \\
        --method rerank --method rerank:untrained --method similarity [--limit-queries N]
    # /rerank with 50 candidates: requests/s, p50/p95, and the share of the time in the model
    python loadtests/rank_eval.py load --url URL --data qnli-dev.jsonl --candidates 50 --concurrency 4 --seconds 30

`rerank[:MODEL]` ranks a question's candidates by /rerank (MODEL: a served rerank model's name);
`similarity[:MODEL]` by /similarity (the cosine of each candidate's embedding to the question's).
Both are scored by the same `bertserve.metrics.ranking_metrics`. The share of time in the model
is the `inference` stage of the service's own Server-Timing header over the client's latency.
Benchmarks are not tests: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bertserve.metrics import ranking_metrics  # noqa: E402


def questions(path: str, limit: int | None = None) -> list[tuple[str, list[str], list[bool]]]:
    """(query, candidates, relevant) per question, in file order (grouped by `id`, else the query)."""
    groups: dict[str, tuple[str, list[str], list[bool]]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            key = str(row.get("id") or row["query"])
            group = groups.setdefault(key, (row["query"], [], []))
            group[1].append(row["passage"])
            group[2].append(bool(int(row["label"])))
    out = list(groups.values())
    return out[:limit] if limit else out


def scores_of(client: Any, method: str, query: str, texts: list[str]) -> list[float]:
    kind, _, model = method.partition(":")
    extra = {"model": model} if model else {}
    if kind == "rerank":
        response = client.post("/rerank", json={"query": query, "texts": texts, **extra})
        response.raise_for_status()
        ranks = sorted(response.json(), key=lambda r: r["index"])
        return [r["score"] for r in ranks]
    if kind == "similarity":
        response = client.post("/similarity", json={"source_sentence": query, "sentences": texts, **extra})
        response.raise_for_status()
        return list(response.json()["scores"])
    raise SystemExit(f"unknown method {method!r}: rerank[:MODEL] or similarity[:MODEL]")


def rank(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    data = questions(args.data, args.limit_queries)
    report: dict[str, Any] = {"data": args.data, "questions": len(data),
                              "candidates": sum(len(t) for _, t, _ in data), "methods": {}}
    with httpx.Client(base_url=args.url, timeout=120) as client:
        for method in args.method:
            started = time.perf_counter()
            scores = [scores_of(client, method, q, texts) for q, texts, _ in data]
            metrics = ranking_metrics(scores, [rel for _, _, rel in data])
            metrics["seconds"] = round(time.perf_counter() - started, 1)
            report["methods"][method] = metrics
            print(f"{method}: {json.dumps(metrics)}", file=sys.stderr)
    first = args.method[0]
    report["difference_vs_first"] = {
        m: {k: round(report["methods"][first][k] - v[k], 4) for k in ("mrr@10", "recall@1", "recall@5")}
        for m, v in report["methods"].items() if m != first}
    return report


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if "dur=" in rest:
            out[name] = float(rest.split("dur=")[1].split(";")[0]) / 1000
    return out


async def load(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    rng = random.Random(0)
    data = questions(args.data)
    pool = [t for _, texts, _ in data for t in texts]
    bodies = [{"query": q, "texts": rng.sample(pool, args.candidates), **({"model": args.model} if args.model else {})}
              for q, _, _ in rng.sample(data, min(len(data), 200))]
    latencies: list[float] = []
    model_s: list[float] = []
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=args.url, timeout=60) as client:
        for body in bodies[:3]:  # warm-up
            await client.post("/rerank", json=body)
        deadline = time.perf_counter() + args.seconds

        async def user(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += args.concurrency
                t0 = time.perf_counter()
                response = await client.post("/rerank", json=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code != 200:  # a refusal (503: over the batcher's latency budget)
                    continue
                latencies.append(time.perf_counter() - t0)
                timing = server_timing(response.headers.get("server-timing", ""))
                model_s.append(timing.get("inference", 0.0))

        started = time.perf_counter()
        await asyncio.gather(*(user(k) for k in range(args.concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    # answered requests only: refusals are counted in `statuses`, not in the rates or latencies
    return {"candidates": args.candidates, "concurrency": args.concurrency, "seconds": round(wall, 1),
            "requests": len(latencies), "statuses": statuses, "requests_per_s": round(len(latencies) / wall, 2),
            "pairs_per_s": round(len(latencies) * args.candidates / wall, 1), "p50_ms": pct(0.5),
            "p95_ms": pct(0.95), "share_in_model": round(sum(model_s) / max(sum(latencies), 1e-9), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rank", help="MRR@10 and Recall@k of each method on the same questions")
    r.add_argument("--url", required=True)
    r.add_argument("--data", required=True, help="rows of `bertserve data qnli` (query, passage, label, id)")
    r.add_argument("--method", action="append", required=True, help="rerank[:MODEL] or similarity[:MODEL]")
    r.add_argument("--limit-queries", type=int, help="only the first N questions")
    ld = sub.add_parser("load", help="/rerank with N candidates per request, closed loop")
    ld.add_argument("--url", required=True)
    ld.add_argument("--data", required=True, help="queries and a candidate pool (rows of `bertserve data qnli`)")
    ld.add_argument("--candidates", type=int, default=50)
    ld.add_argument("--concurrency", type=int, default=4)
    ld.add_argument("--seconds", type=float, default=30)
    ld.add_argument("--model", help="a served rerank model's name")
    args = p.parse_args(argv)
    result = rank(args) if args.command == "rank" else asyncio.run(load(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
