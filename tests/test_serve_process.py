"""The third level of BentoML testing: a real `bentoml serve` process, as `make serve` runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(published_single, tmp_path):
    port = free_port()
    env = {**os.environ, "BERTSERVE_MODEL_CLASSIFICATION": published_single["tag"]}
    # a file, not a pipe: an unread pipe fills up with access logs and stalls the server
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the service was not ready within 120 s")
    yield url, proc
    if proc.poll() is None:
        # SIGTERM: BentoML stops its worker too (SIGKILL would orphan the worker, still serving)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bentoml_serve_answers_and_exits_cleanly(served, published_single):
    url, proc = served
    response = httpx.post(f"{url}/classify", json={"texts": ["great wonderful", "awful worst"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == published_single["tag"]
    assert httpx.get(f"{url}/info", timeout=10).json()["models"]["classification"]["tag"] == published_single["tag"]
    assert {p.split(";")[0].strip() for p in response.headers["server-timing"].split(",")} == {
        "tokenize", "queue", "inference"}
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    # ours, gathered from the worker by BentoML's multiprocess collector
    for name in ("bertserve_stage_seconds_bucket", "bertserve_padding_ratio_bucket", "bertserve_tokens_total"):
        assert f'{name}{{' in metrics.text, name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_stepped_load_test_compares_three_systems(served, trained_single, tmp_path):
    """`make loadtest` end to end, briefly: the service, the same with batching off, the pipeline server."""
    import json

    url, _ = served
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["a fine film", "dull and far too long for what it says", "great"] * 5))
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "loadtests/steps.py", "--host", url, "--endpoints", "/classify",
                          "--users", "1,4", "--step-time", "3", "--baseline-model", str(trained_single),
                          "--texts-file", str(texts), "--out", str(out), "--slo-p95-ms", "60000"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = (out / "steps.csv").read_text().splitlines()
    systems = {line.split(",")[0] for line in rows[1:]}
    assert systems == {"bertserve", "nobatch", "baseline"} and len(rows) == 1 + 3 * 2 + 1
    summary = json.loads((out / "summary.json").read_text())
    info = summary["per_endpoint"]["/classify"]
    assert info["peak_rps"] > 0 and set(info["ratio_at_32_users"]) <= {"nobatch", "baseline"}
    assert 0 <= info["padding_waste"] < 1 and summary["slo"]["breaches"] == []
    assert (out / "latency.png").stat().st_size > 10_000
    assert "| baseline | 4 |" in (out / "report.md").read_text()
