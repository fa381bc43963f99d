"""BentoML workers that die: one killed while serving is replaced and the service recovers; one that
cannot start is retried a bounded number of times, then `bentoml serve` exits non-zero naming why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.test_serve_process import ROOT, free_port, start_serve, stop_serve

WORKER_MODULE = "_bentoml_impl.worker.service"


def workers(server: subprocess.Popen) -> list[psutil.Process]:
    """The server's BentoML workers (not the server itself, BentoML's arbiter)."""
    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if WORKER_MODULE in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_worker_killed_mid_load_is_replaced_and_ready_only_once_warm(published_single, tmp_path):
    """SIGKILL the worker (not the arbiter) while four clients send requests: BentoML's arbiter
    starts a new worker, /readyz fails until that one has loaded and warmed its models, and every
    request either gets a full 200 answer or fails visibly (counted here). Prints the requests lost
    and the recovery time; no timing is asserted."""
    url, proc = start_serve(tmp_path, BERTSERVE_MODEL_CLASSIFICATION=published_single["tag"],
                            BERTSERVE_SHUTDOWN_DRAIN_S="0")
    texts = [f"a good film, number {i}" for i in range(16)]
    stop = threading.Event()
    lock = threading.Lock()
    records: list[tuple[float, float, object]] = []  # start, end, 200 or what went wrong
    probes: list[tuple[float, object]] = []  # when, /readyz status or the exception's name

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = http.post(f"{url}/classify", json={"texts": texts})
                    outcome: object = r.status_code if r.status_code != 200 or len(r.json()["results"]) == 16 else "short"
                except httpx.HTTPError as exc:  # every failure is a lost request
                    outcome = type(exc).__name__
                with lock:
                    records.append((start, time.monotonic(), outcome))

    def readiness() -> None:
        while not stop.is_set():
            at = time.monotonic()
            try:
                status: object = httpx.get(f"{url}/readyz", timeout=1).status_code
            except httpx.HTTPError as exc:  # nothing accepting: the arbiter holds the socket
                status = type(exc).__name__
            with lock:
                probes.append((at, status))
            time.sleep(0.1)

    threads = [threading.Thread(target=client) for _ in range(4)] + [threading.Thread(target=readiness)]
    try:
        (old,) = workers(proc)
        for t in threads:
            t.start()
        time.sleep(3.0)
        killed = time.monotonic()
        old.send_signal(signal.SIGKILL)
        new, ready = None, None
        deadline = killed + 120
        while time.monotonic() < deadline and ready is None:
            if new is None:
                new = next((w for w in workers(proc) if w.pid != old.pid), None)
            with lock:
                ready = next((at for at, status in probes if at > killed and status == 200), None)
            time.sleep(0.1)
        assert ready is not None, "no worker was ready again within 120 s"
        time.sleep(3.0)  # load on the new worker
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    try:
        assert proc.poll() is None, "the server itself stopped"
        assert new is not None and new.pid != old.pid
        unready = [(at, status) for at, status in probes if killed < at < ready]
        assert unready and all(status != 200 for _, status in unready), "/readyz was 200 before a worker was back"
        assert new.create_time() < time.time() - (time.monotonic() - ready), "ready before the new worker existed"
        log = (tmp_path / "serve.log").read_text()
        # BentoML's line once a worker's service instance exists: models loaded and warmed up
        assert log.count("Service bertserve initialized") == 2, log[-3000:]
        after = [r for r in records if r[0] > ready]
        assert after and all(r[2] == 200 for r in after), [r[2] for r in after if r[2] != 200][:5]
    finally:
        stop_serve(proc)
    assert proc.returncode == 0
    lost = [r for r in records if r[2] != 200]
    kinds: dict[str, int] = {}
    for r in lost:
        kinds[str(r[2])] = kinds.get(str(r[2]), 0) + 1
    in_flight = [r for r in records if r[0] < killed < r[1]]
    waited = [r for r in records if killed < r[0] < ready and r[2] == 200]
    print(f"\nworker {old.pid} killed under load from 4 clients: {len(records)} requests, {len(lost)} lost "
          f"({kinds or 'none'}), {len(in_flight)} in flight at the kill, {len(waited)} sent during the outage and "
          f"answered 200 once the new worker ({new.pid}) was up; /readyz 200 again after {ready - killed:.1f} s; "
          f"{len(unready)} readiness probes failed in between")


def corrupt_but_checksummed(tag: str, home: Path) -> None:
    """A copy of the published model in a new store, its ONNX file replaced by bytes onnxruntime
    refuses, and its card's checksums recorded anew: the start check passes, loading fails."""
    import bentoml

    from bertserve.artifact import checksum_files, read_card, write_card

    model = bentoml.models.get(tag)
    store_dir = Path(model.path).parent  # models/<name>/, with its `latest` pointer
    shutil.copytree(store_dir, home / "models" / store_dir.name)
    directory = home / "models" / store_dir.name / Path(model.path).name
    (directory / "model.onnx").write_bytes(b"not an onnx model, but checksummed as one")
    card = read_card(directory)
    card.files = checksum_files(directory, list(card.files))
    write_card(directory, card)


def test_a_worker_that_cannot_start_is_retried_a_bounded_number_of_times(published_single, tmp_path):
    """onnxruntime refuses a model whose checksums match: the worker fails in __init__, BentoML's
    arbiter would start it again and again (outside containers); with BERTSERVE_WORKER_START_TRIES=2
    the second failure stops `bentoml serve`, which exits 1 and says why."""
    from bertserve.registry import tasks

    home = tmp_path / "bentoml-home"
    corrupt_but_checksummed(published_single["tag"], home)
    log = tmp_path / "serve.log"
    env = {**os.environ, **{f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}, "BENTOML_HOME": str(home),
           "BERTSERVE_MODEL_CLASSIFICATION": published_single["tag"], "BERTSERVE_WORKER_START_TRIES": "2"}
    env.pop("BENTOML_CONTAINERIZED", None)  # BentoML respawns workers only outside containers
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(free_port()), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        rc = proc.wait(timeout=150)
    finally:
        stop_serve(proc)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert text.count("worker start failed") == 2, text[-3000:]
    assert "bertserve cannot start: a worker failed to start 2 times in a row (BERTSERVE_WORKER_START_TRIES=2)" in text
    assert "INVALID_PROTOBUF" in text.rsplit("bertserve cannot start", 1)[1], text[-2000:]  # onnxruntime's cause
    print(f"\ngave up after 2 failed worker starts, {time.monotonic() - started:.1f} s after the start")
