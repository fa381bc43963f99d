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


def no_task_defaults() -> dict[str, str]:
    """Environment that unpins every task's default model (the in-process service fixture pins
    them for the whole session): a served set named by BERTSERVE_MODELS alone."""
    from bertserve.registry import tasks

    return {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}


def start_serve(tmp_path: Path, **env_extra: str) -> tuple[str, subprocess.Popen]:
    """`bentoml serve` from the repository root on a free port, once `/readyz` answers 200."""
    port = free_port()
    env = {**os.environ, **env_extra}
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
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail("the service was not ready within 120 s")


def stop_serve(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # SIGTERM: BentoML stops its worker too (SIGKILL would orphan the worker, still serving)
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def served(published_single, tmp_path):
    url, proc = start_serve(tmp_path, BERTSERVE_MODEL_CLASSIFICATION=published_single["tag"],
                            BERTSERVE_SHUTDOWN_DRAIN_S="0")
    yield url, proc
    stop_serve(proc)


def test_bentoml_serve_answers_and_exits_cleanly(served, published_single):
    url, proc = served
    response = httpx.post(f"{url}/classify", json={"texts": ["great wonderful", "awful worst"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == published_single["tag"]
    info = httpx.get(f"{url}/info", timeout=10).json()["models"]["classification"]
    assert info["tag"] == published_single["tag"]
    page = httpx.get(f"{url}{info['report']}", timeout=10)  # the model report, as export drew it
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == (Path(published_single["artifact"]) / "report.html").read_bytes()
    missing = httpx.get(f"{url}/models/nope/report", timeout=10)
    assert missing.status_code == 404 and missing.json()["error_type"] == "unknown_model"
    assert {p.split(";")[0].strip() for p in response.headers["server-timing"].split(",")} == {
        "tokenize", "queue", "inference", "model"}
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    # ours, gathered from the worker by BentoML's multiprocess collector
    for name in ("bertserve_stage_seconds_bucket", "bertserve_padding_ratio_bucket", "bertserve_tokens_total",
                 "bertserve_forward_cpu_seconds_total"):
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


def test_sigterm_mid_load_loses_no_accepted_request(published_single, tmp_path):
    """SIGTERM while clients are sending: /readyz turns 503 at once, requests keep being answered
    through the drain (with `Connection: close`), the clients go away as a load balancer would on
    seeing /readyz fail, and the process exits 0. Every request sent got a full 200 answer."""
    import threading

    drain_s = 3.0
    url, proc = start_serve(tmp_path, BERTSERVE_MODEL_CLASSIFICATION=published_single["tag"],
                            BERTSERVE_SHUTDOWN_DRAIN_S=str(drain_s))
    texts = [f"a good film, number {i}" for i in range(64)]
    stop_sending = threading.Event()
    records: list[tuple[float, float, object, bool]] = []  # start, end, status or exception, connection: close
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop_sending.is_set():
                start = time.monotonic()
                try:
                    r = http.post(f"{url}/classify", json={"texts": texts})
                    outcome: object = r.status_code if r.status_code != 200 or len(r.json()["results"]) == 64 else "short"
                    closing = r.headers.get("connection") == "close"
                except Exception as exc:  # every failure is a lost request
                    outcome, closing = repr(exc), False
                with lock:
                    records.append((start, time.monotonic(), outcome, closing))

    unready_at: list[float] = []

    def balancer() -> None:
        """Polls /readyz like a Kubernetes endpoint controller; stops traffic 1 s after it fails."""
        while not unready_at:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 503:
                    unready_at.append(time.monotonic())
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        time.sleep(1.0)
        stop_sending.set()

    threads = [threading.Thread(target=client) for _ in range(6)] + [threading.Thread(target=balancer)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=40)
        exited = time.monotonic()
    finally:
        stop_sending.set()
        for t in threads:
            t.join(60)
        stop_serve(proc)
    assert rc == 0
    assert unready_at and unready_at[0] - signalled < 1.0, "/readyz did not turn 503 promptly"
    assert exited - signalled >= drain_s, "the process did not wait for the drain"
    in_flight = [r for r in records if r[0] < signalled < r[1]]
    after = [r for r in records if r[0] > signalled]
    assert in_flight and after, (len(in_flight), len(after))
    lost = [r for r in records if r[2] != 200]
    print(f"{len(records)} requests, {len(in_flight)} in flight at SIGTERM, {len(after)} sent after it, "
          f"{len(lost)} lost; /readyz 503 after {unready_at[0] - signalled:.2f} s, exit after {exited - signalled:.1f} s")
    assert not lost, lost[:5]
    assert all(r[3] for r in after), "answers while draining should carry Connection: close"


def test_overload_at_twice_the_peak_answers_only_200_429_503_and_recovers(published_single, tmp_path):
    """`loadtests/stress.py overload`, briefly, with a concurrency limit low enough for 429s."""
    import json

    url, proc = start_serve(tmp_path, BERTSERVE_MODEL_CLASSIFICATION=published_single["tag"],
                            BERTSERVE_MAX_CONCURRENT_REQUESTS="4", BERTSERVE_SHUTDOWN_DRAIN_S="0")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["a fine film", "dull and far too long for what it says", "great"] * 5))
    out = tmp_path / "overload"
    try:
        run = subprocess.run([sys.executable, "loadtests/stress.py", "overload", "--host", url, "--peak-users", "4",
                              "--step-time", "3", "--texts-file", str(texts), "--out", str(out)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop_serve(proc)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    statuses = summary["overload_statuses"]
    assert set(statuses) <= {"200", "429", "503"} and statuses.get("429", 0) > 0, statuses
    assert summary["recovered"] and summary["ready_after"] and summary["accepted_p95_ms"] is not None
    assert [p["name"] for p in summary["phases"]] == ["peak", "before", "overload", "after"]
    assert "| overload |" in (out / "report.md").read_text()


def test_a_tampered_model_file_stops_the_start_naming_the_file(published_single, tmp_path):
    """A model whose ONNX file was changed after export: `bentoml serve` exits, and says which file."""
    import shutil

    import bentoml

    model = bentoml.models.get(published_single["tag"])
    home = tmp_path / "bentoml-home"
    store_dir = Path(model.path).parent  # models/<name>/, with its `latest` pointer
    shutil.copytree(store_dir, home / "models" / store_dir.name)
    onnx = home / "models" / store_dir.name / Path(model.path).name / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100])  # truncated
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", str(free_port()), "--host", "127.0.0.1"],
                            cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home),
                                           "BERTSERVE_MODEL_CLASSIFICATION": published_single["tag"]},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        rc = proc.wait(timeout=120)
    finally:
        stop_serve(proc)
    assert rc != 0
    assert "model.onnx does not match the checksum" in log.read_text(), log.read_text()[-3000:]


def topic_rows(n: int, seed: int) -> list[dict]:
    import random

    from tests.conftest import FILLER

    rng = random.Random(seed)
    topics = {"sports": ["game", "team", "goal"], "politics": ["vote", "party", "law"],
              "science": ["lab", "atom", "gene"]}
    out = []
    for i in range(n):
        label = list(topics)[i % 3]
        words = [*rng.sample([w for w in FILLER if all(w not in t for t in topics.values())], 4),
                 rng.choice(topics[label])]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


@pytest.fixture(scope="module")
def published_topics(tiny_base, tmp_path_factory):
    """A second classifier, with other labels than the sentiment one."""
    from tests.conftest import export_tiny, tiny_config, write_jsonl
    from training import run_training

    directory = tmp_path_factory.mktemp("topics")
    train = write_jsonl(directory / "train.jsonl", topic_rows(240, 21))
    validation = write_jsonl(directory / "validation.jsonl", topic_rows(60, 22))
    run_training(tiny_config(tiny_base, train, directory / "model", validation=str(validation)))
    return export_tiny(directory / "model", tmp_path_factory, "tiny-topics")


def test_several_named_models_per_task_from_one_bentoml_serve(published_single, published_topics,
                                                            published_similarity, tmp_path):
    models = (f"sentiment={published_single['tag']},topics={published_topics['tag']},"
              f"pairs={published_similarity['tag']}")
    from bertserve.registry import tasks

    no_task_defaults = {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}
    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=models, BERTSERVE_SHUTDOWN_DRAIN_S="0", **no_task_defaults)
    try:
        def classify(**extra):
            return httpx.post(f"{url}/classify", json={"texts": ["the team scored a goal"], **extra}, timeout=30)

        default, sentiment, topics = classify(), classify(model="sentiment"), classify(model="topics")
        assert default.status_code == sentiment.status_code == topics.status_code == 200, default.text
        assert default.json()["model"] == sentiment.json()["model"] == published_single["tag"]  # the first is default
        assert topics.json()["model"] == published_topics["tag"]
        assert set(topics.json()["results"][0]["scores"]) == {"sports", "politics", "science"}
        assert set(sentiment.json()["results"][0]["scores"]) == {"negative", "positive"}
        assert classify(model=published_topics["tag"]).json()["model"] == published_topics["tag"]  # by tag too
        assert 'model;desc="topics"' in topics.headers["server-timing"]

        wrong = classify(model="sentimnet")
        assert wrong.status_code == 404 and wrong.json()["error_type"] == "unknown_model"
        assert "sentiment" in wrong.json()["error"] and "topics" in wrong.json()["error"]
        other_task = classify(model="pairs")
        assert other_task.status_code == 404 and "similarity model" in other_task.json()["error"]

        embedded = httpx.post(f"{url}/embed", json={"texts": ["a b"], "model": "pairs"}, timeout=30)
        assert embedded.status_code == 200 and embedded.json()["model"] == published_similarity["tag"]
        openai = httpx.post(f"{url}/v1/embeddings", json={"input": "a b", "model": "pairs"}, timeout=30)
        assert openai.status_code == 200, openai.text
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "a b", "model": "text-embedding-3-small"},
                          timeout=30).status_code == 404
        # a task with no model named in BERTSERVE_MODELS is not served
        assert httpx.post(f"{url}/ner", json={"texts": ["bob"]}, timeout=30).status_code == 503

        info = httpx.get(f"{url}/info", timeout=10).json()
        assert set(info["models"]) == {"sentiment", "topics", "pairs"}
        assert info["defaults"] == {"classification": "sentiment", "similarity": "pairs"}
        assert info["models"]["topics"]["task"] == "classification" and not info["models"]["topics"]["default"]

        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        series = [line for line in metrics.splitlines() if line.startswith("bertserve_stage_seconds_count{")]
        for name in ("sentiment", "topics", "pairs"):  # one series per served model
            assert any(f'model="{name}"' in line for line in series), (name, series)
    finally:
        stop_serve(proc)


def test_multi_label_and_regression_models_are_gated_and_served(tiny_base, tmp_path_factory, tmp_path):
    """A multi-label model (sigmoid scores, per-label thresholds) and a regression model go through
    the gate, measured by micro-F1 and Spearman, and a real `bentoml serve` answers `labels` with the
    thresholds applied and `value`."""
    import json
    import random

    from bertserve.registry import tasks
    from tests.conftest import TOPIC_WORDS as words
    from tests.conftest import (
        export_tiny,
        multi_label_rows,
        regression_rows,
        tiny_config,
        write_jsonl,
    )
    from training import run_training

    rng = random.Random(9)
    directory = tmp_path_factory.mktemp("heads")
    run_training(tiny_config(tiny_base, write_jsonl(directory / "m.jsonl", multi_label_rows(120, rng)),
                             directory / "multi",
                             validation=str(write_jsonl(directory / "mv.jsonl", multi_label_rows(40, rng)))))
    values = regression_rows()
    # 40 epochs: the kept checkpoint is the lowest validation MSE, and the tiny head needs ~120 steps
    # to spread its values out from about 0 to the targets' 0.5-4.5
    run_training(tiny_config(tiny_base, write_jsonl(directory / "r.jsonl", values), directory / "regression",
                             validation=str(write_jsonl(directory / "rv.jsonl", values[:20])), epochs=40))
    multi = export_tiny(directory / "multi", tmp_path_factory, "tiny-multi")
    regression = export_tiny(directory / "regression", tmp_path_factory, "tiny-regression")
    for published, metric in ((multi, "micro_f1"), (regression, "spearman")):
        assert published["metric"] == metric and published["variant"].startswith("int8"), published
        card = json.loads((Path(published["artifact"]) / "bertserve.json").read_text())
        assert card["parity"]["metric"] == metric
        assert card["parity"]["variants"]["int8"]["metrics"][metric] >= 0.7, card["parity"]["variants"]["int8"]
        assert card["parity"]["variants"]["int8"]["passed"]
    thresholds = json.loads((Path(multi["artifact"]) / "bertserve.json").read_text())["thresholds"]

    no_task_defaults = {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}
    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=f"topics={multi['tag']},score={regression['tag']}",
                            BERTSERVE_SHUTDOWN_DRAIN_S="0", **no_task_defaults)
    try:
        texts = ["goal team vote party", "atom gene", "cell game"]
        answer = httpx.post(f"{url}/classify", json={"texts": texts, "model": "topics"}, timeout=30)
        assert answer.status_code == 200, answer.text
        for result in answer.json()["results"]:
            assert set(result["scores"]) == set(words)
            assert result["labels"] == [k for k in sorted(words) if result["scores"][k] >= thresholds.get(k, 0.5)]
        assert "science" in answer.json()["results"][1]["labels"]  # what the gate measured: it learned

        scored = httpx.post(f"{url}/classify", json={"texts": ["good good good good", "the the the the"],
                                                     "model": "score"}, timeout=30)
        assert scored.status_code == 200, scored.text
        high, low = (r["value"] for r in scored.json()["results"])
        # ordered as the gate's Spearman measured (the tiny model's scale is not what is tested here)
        assert high > low, (high, low)
        assert "label" not in scored.json()["results"][0]
        info = httpx.get(f"{url}/info", timeout=10).json()["models"]
        assert info["topics"]["card"]["problem_type"] == "multi_label"
        assert info["score"]["card"]["problem_type"] == "regression"
    finally:
        stop_serve(proc)
