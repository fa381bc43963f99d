"""Hot reload (service/reload.py): POST /admin/reload, SIGHUP and the store watch swap in newer
published versions while a real `bentoml serve` with two workers answers a load loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import bentoml
import httpx
import pytest

from bertserve.client import ServiceClient
from bertserve.errors import ConfigError
from tests.test_serve_process import ROOT, no_task_defaults, start_serve, stop_serve

TEXTS = [f"a good film, number {i}" for i in range(8)]


def publish_copy(artifact: str | Path, name: str, env: dict[str, str] | None = None) -> str:
    """A new published version of `name` (the files of an exported artifact, published as export
    does); with `env` (another BENTOML_HOME) in a separate process."""
    code = ("import sys; from bertserve.artifact import read_card; from bertserve.store import publish; "
            "print(publish(sys.argv[1], sys.argv[2], read_card(sys.argv[1])))")
    if env is None:
        from bertserve.artifact import read_card
        from bertserve.store import publish

        return publish(artifact, name, read_card(Path(artifact)))
    run = subprocess.run([sys.executable, "-c", code, str(artifact), name], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


class LoadLoop:
    """Clients posting /classify without pause; every answer recorded (start, end, status, model)."""

    def __init__(self, url: str, clients: int = 4, headers: dict[str, str] | None = None):
        self.url, self.headers = url, headers or {}
        self.records: list[tuple[float, float, object, str | None]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(timeout=60, headers=self.headers) as http:
            while not self._stop.is_set():
                start = time.monotonic()
                model = None
                try:
                    r = http.post(f"{self.url}/classify", json={"texts": TEXTS})
                    outcome: object = r.status_code
                    if r.status_code == 200:
                        body = r.json()
                        model = body["model"]
                        outcome = 200 if len(body["results"]) == len(TEXTS) else "short"
                except httpx.HTTPError as exc:  # every failure is a lost request
                    outcome = type(exc).__name__
                with self._lock:
                    self.records.append((start, time.monotonic(), outcome, model))

    def __enter__(self) -> LoadLoop:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def tags_answering(url: str, n: int = 12, headers: dict[str, str] | None = None) -> set[str]:
    """The tags that answer n requests on fresh connections (the kernel spreads them over workers)."""
    return {httpx.post(f"{url}/classify", json={"texts": ["fine"]}, headers=headers or {}, timeout=30).json()["model"]
            for _ in range(n)}


def test_reload_under_load_answers_every_request_and_then_only_the_new_tag(published_single, tmp_path):
    """Two workers behind the API key, four clients sending: a new version is published and POST
    /admin/reload called. No request fails, every request sent after the reload's answer is answered
    by the new tag, requests before it by the old one; /info shows the new tag."""
    artifact = published_single["artifact"]
    old = publish_copy(artifact, "reload-sentiment")
    key = {"authorization": "Bearer s3cret"}
    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=f"sentiment={old}", BERTSERVE_ADMIN_RELOAD="true",
                            **no_task_defaults(),
                            BERTSERVE_API_KEY="s3cret", BERTSERVE_WORKERS="2", BERTSERVE_THREADS="1",
                            BERTSERVE_SHUTDOWN_DRAIN_S="0")
    try:
        refused = httpx.post(f"{url}/admin/reload", timeout=30)
        assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"
        with pytest.raises(ConfigError, match="API key"):
            ServiceClient(url).reload()
        with LoadLoop(url, headers=key) as load:
            time.sleep(2.0)
            new = publish_copy(artifact, "reload-sentiment")
            asked = time.monotonic()
            body = ServiceClient(url, api_key="s3cret").reload()  # what `bertserve reload` sends
            answered = time.monotonic()
            time.sleep(2.0)
        info = httpx.get(f"{url}/info", timeout=10).json()
        # a newer version whose file changed after export: refused, the service keeps what it serves
        broken = publish_copy(artifact, "reload-sentiment")
        with (Path(bentoml.models.get(broken).path) / "model.onnx").open("ab") as onnx:
            onnx.write(b"tampered")
        refusal = httpx.post(f"{url}/admin/reload", headers=key, json={"models": ["sentiment"]}, timeout=60)
        still = tags_answering(url, 6, key)
    finally:
        stop_serve(proc)
    assert body["models"]["sentiment"] == {"before": old, "after": new}
    assert body["changed"] == ["sentiment"] and body["workers"] == 2
    records = load.records
    failed = [r for r in records if r[2] != 200]
    before = [r for r in records if r[1] < asked]
    after = [r for r in records if r[0] > answered]
    print(f"{len(records)} requests, {len(failed)} failed; reload answered in {answered - asked:.2f} s; "
          f"{len(before)} answered before it was asked, {len(after)} sent after its answer")
    assert not failed, failed[:5]
    assert before and {r[3] for r in before} == {old}
    assert after and {r[3] for r in after} == {new}, {r[3] for r in after}
    assert info["models"]["sentiment"]["tag"] == new
    assert refusal.status_code == 409 and refusal.json()["error_type"] == "reload_failed", refusal.text
    assert "model.onnx" in refusal.json()["error"] and "stays as it was" in refusal.json()["error"]
    assert still == {new}


def test_sighup_reloads_every_worker_and_the_endpoint_is_off_by_default(published_single, tmp_path):
    """Without BERTSERVE_ADMIN_RELOAD the endpoint is a 404 that says how to turn it on; SIGHUP to
    `bentoml serve` reloads both workers (BentoML's own SIGHUP would restart them) and loses nothing."""
    artifact = published_single["artifact"]
    old = publish_copy(artifact, "hup-sentiment")
    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=f"sentiment={old}", BERTSERVE_WORKERS="2",
                            **no_task_defaults(),
                            BERTSERVE_THREADS="1", BERTSERVE_SHUTDOWN_DRAIN_S="0")
    try:
        off = httpx.post(f"{url}/admin/reload", timeout=30)
        assert off.status_code == 404 and off.json()["error_type"] == "not_found"
        assert "BERTSERVE_ADMIN_RELOAD=true" in off.json()["error"]
        cli = subprocess.run([sys.executable, "-m", "bertserve_cli", "reload", "--url", url], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 2 and "BERTSERVE_ADMIN_RELOAD=true" in cli.stderr, cli.stderr[-2000:]
        new = publish_copy(artifact, "hup-sentiment")
        with LoadLoop(url) as load:
            time.sleep(1.0)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and tags_answering(url) != {new}:
                time.sleep(0.5)
            served = tags_answering(url, 20)
        assert proc.poll() is None, "SIGHUP stopped the server"
    finally:
        stop_serve(proc)
    assert served == {new}
    failed = [r for r in load.records if r[2] != 200]
    assert load.records and not failed, failed[:5]


def test_store_watch_serves_a_task_as_its_demo_model_lands(published_single, tmp_path):
    """A service on an empty store with BERTSERVE_WATCH_STORE_S: while `bertserve quickstart`'s
    note says the classification demo is training, /classify answers 503 saying so and /info lists
    it; once a model is published, it is served without a reload being asked for."""
    home = tmp_path / "bentoml"
    (home / "models").mkdir(parents=True)
    # the note a running quickstart leaves (this process stands in for it: it is alive)
    (home / "bertserve-quickstart.json").write_text(json.dumps(
        {"pid": os.getpid(), "pending": ["classification"], "log": "runs/quickstart/quickstart.log"}))
    env = {"BENTOML_HOME": str(home), **no_task_defaults()}
    url, proc = start_serve(tmp_path, **env, BERTSERVE_WATCH_STORE_S="0.5", BERTSERVE_SHUTDOWN_DRAIN_S="0")
    try:
        waiting = httpx.post(f"{url}/classify", json={"texts": ["fine"]}, timeout=30)
        assert waiting.status_code == 503, waiting.text
        assert "demo classification model is still training" in waiting.json()["error"]
        assert "runs/quickstart/quickstart.log" in waiting.json()["error"]
        assert httpx.get(f"{url}/info", timeout=10).json()["training"] == ["classification"]
        tag = publish_copy(published_single["artifact"], "demo-classification", env)
        (home / "bertserve-quickstart.json").unlink()
        landed = time.monotonic()
        deadline = landed + 30
        while time.monotonic() < deadline:
            r = httpx.post(f"{url}/classify", json={"texts": ["fine"]}, timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.2)
        served_after = time.monotonic() - landed
        info = httpx.get(f"{url}/info", timeout=10).json()
    finally:
        stop_serve(proc)
    assert r.status_code == 200 and r.json()["model"] == tag, r.text
    assert info["models"]["classification"]["tag"] == tag and info["training"] == []
    print(f"served {served_after:.1f} s after it was published")


def test_reload_in_process_names_and_refusals(service_client, limits, published_single):
    """The endpoint in process: off -> 404; an unknown name -> 404 naming the served ones; an
    unchanged model is kept (the same object); a body with unknown fields -> 422."""
    from service.service import SERVED

    off = service_client.post("/admin/reload")
    assert off.status_code == 404 and "BERTSERVE_ADMIN_RELOAD" in off.json()["error"]
    limits(admin_reload=True)
    unknown = service_client.post("/admin/reload", json={"models": ["nope"]})
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "unknown_model"
    assert "classification" in unknown.json()["error"]
    bad = service_client.post("/admin/reload", json={"model": "classification"})
    assert bad.status_code == 422, bad.text
    before = SERVED.models.by_name["classification"] if SERVED.models else None
    ok = service_client.post("/admin/reload", json={"models": ["classification"]})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["workers"] == 1 and body["changed"] == []
    assert body["models"]["classification"]["after"] == published_single["tag"]
    assert SERVED.models is not None and SERVED.models.by_name["classification"] is before


def test_quickstart_publishes_the_untrained_demo_first_and_notes_what_trains(monkeypatch):
    """The default encoder (no training) comes first, and while each demo is made the store holds
    the note a service reads; it is gone afterwards, also when a demo fails."""
    import export.quickstart as quickstart
    from bertserve.store import demo_training

    assert next(iter(quickstart.demos())) == "similarity"
    monkeypatch.setattr(quickstart, "list_published", lambda task=None: [])
    seen: list[list[str]] = []

    def fake(task, options, output, force):
        seen.append(list((demo_training() or {}).get("pending", [])))
        if task == "qa":
            raise RuntimeError("injected")
        return f"demo-{task}:v1"

    monkeypatch.setattr(quickstart, "_ensure_demo", fake)
    with pytest.raises(RuntimeError):
        quickstart.ensure_demo_models(log_file="q.log")
    assert seen[0][0] == "similarity" and seen[1] == seen[0][1:]
    assert demo_training() is None


def test_the_record_collects_what_each_reload_asked_for():
    """A worker that missed reloads (it was busy, or started after them) reloads what they asked for."""
    from service.reload import ReloadRecord

    record = ReloadRecord.private()
    assert record.state()["generation"] == 0
    assert record.request(["a"]) == 1 and record.request(["b"]) == 2
    assert record.names_since(0) == ["a", "b"] and record.names_since(1) == ["b"]
    assert record.request(None) == 3 and record.names_since(1) is None and record.names_since(3) == []
    record.ack(3, {"a": "x:1"})
    (note,) = record.acks()
    assert note["pid"] == os.getpid() and note["generation"] == 3 and note["error"] is None


def test_the_api_document_lists_the_reload_endpoint_with_the_one_error_shape():
    from service.service import app

    operation = app.openapi()["paths"]["/admin/reload"]["post"]
    for status in ("400", "401", "404", "409", "422", "504"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReloadResponse"}


def test_every_setting_is_in_the_readme_table():
    from service.settings import ServiceSettings

    readme = (ROOT / "README.md").read_text()
    missing = [f for f in ServiceSettings.model_fields if f"| `BERTSERVE_{f.upper()}` |" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
