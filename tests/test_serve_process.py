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
def served(published_single):
    port = free_port()
    env = {**os.environ, "BERTSERVE_MODEL_CLASSIFICATION": published_single["tag"]}
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited early:\n{proc.stdout.read()[-3000:]}")
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
        proc.kill()
        proc.wait()


def test_bentoml_serve_answers_and_exits_cleanly(served, published_single):
    url, proc = served
    response = httpx.post(f"{url}/classify", json={"texts": ["great wonderful", "awful worst"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == published_single["tag"]
    assert httpx.get(f"{url}/info", timeout=10).json()["models"]["classification"]["tag"] == published_single["tag"]
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
