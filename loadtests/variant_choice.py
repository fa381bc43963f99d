"""Which variant a real `bentoml serve` chooses for a published model, and whether it is the fastest.

    python loadtests/variant_choice.py --tag sst2:latest [--data ../shared/data/sst2/dev.tsv --column sentence]

Starts `bentoml serve` three times with the model (the choice as made here; as an AVX2-only node,
BERTSERVE_CPU_ISA=avx2; pinned, BERTSERVE_VARIANT=export) and prints, for each, the seconds until
`/readyz` answered and `/info`'s account of the choice (the median ms it measured per variant, the
variants it could not run and why, the seconds the choice took). Then times every variant of the
model again, independently and for longer: `--rounds` rounds over `--n` texts of `--data`, one text
at a time, the variants interleaved round by round, on 2 onnxruntime threads (the service's default
on two cores), and prints each variant's median ms. Benchmarks are not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = (("chosen here", {}), ("as an AVX2-only node", {"BERTSERVE_CPU_ISA": "avx2"}),
         ("pinned: the export's choice", {"BERTSERVE_VARIANT": "export"}))


def serve_once(tag: str, port: int, env: dict[str, str]) -> tuple[float, dict]:
    log = Path(tempfile.gettempdir()) / f"variant-choice-{port}.log"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "BERTSERVE_MODELS": f"m={tag}", **env},
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"bentoml serve exited: see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.monotonic() - start
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()["models"]["m"]
    finally:
        proc.terminate()
        proc.wait(60)
    return ready, {"variant": info["variant"], **(info.get("variants") or {})}


def independent(tag: str, texts: list[str], rounds: int) -> dict[str, float]:
    import bentoml

    from bertserve.artifact import read_card
    from bertserve.runtime import Pipeline

    path = Path(bentoml.models.get(tag).path)
    card = read_card(path)
    names = list(card.variants or [card.variant])
    pipes = {v: Pipeline.from_artifact(path, card, threads=2, spinning=False, variant=v) for v in names}
    for pipe in pipes.values():
        pipe.predict(texts[:8])
    times: dict[str, list[float]] = {v: [] for v in pipes}
    for _ in range(rounds):
        for name, pipe in pipes.items():
            for text in texts:
                start = time.perf_counter()
                pipe.predict([text])
                times[name].append((time.perf_counter() - start) * 1000)
    return {v: round(statistics.median(ts), 3) for v, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", required=True, help="a published model (store tag)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/sst2/dev.tsv"), help="a TSV of texts")
    parser.add_argument("--column", default="sentence", help="the TSV column holding the texts")
    parser.add_argument("--n", type=int, default=200, help="texts timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3190)
    args = parser.parse_args()
    for label, env in CASES:
        ready, choice = serve_once(args.tag, args.port, env)
        print(f"{label}: ready after {ready:.1f} s; {json.dumps(choice)}", flush=True)
    with open(args.data, newline="") as fh:
        texts = [row[args.column] for row in csv.DictReader(fh, delimiter="\t")][: args.n]
    print(f"independent timing, {args.rounds} x {len(texts)} texts one at a time (median ms):",
          json.dumps(independent(args.tag, texts, args.rounds)))


if __name__ == "__main__":
    main()
