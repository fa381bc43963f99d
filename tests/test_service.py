"""The BentoML service in process over HTTP (ASGI), serving the published tiny model."""

from __future__ import annotations

import json

import pytest

from bertserve.runtime import Pipeline, plan_sub_batches
from bertserve.schemas import ClassifyResponse
from bertserve.store import resolve


def post(client, body, **kwargs):
    return client.post("/classify", json=body, **kwargs)


def assert_error(response, status: int, error_type: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    return body


def test_health(service_client):
    assert service_client.get("/livez").status_code == 200
    assert service_client.get("/readyz").status_code == 200


def test_classify_answers_what_the_published_pipeline_answers(service_client, published_single):
    texts = ["the film was great and wonderful", "an awful boring plot", "this is it"]
    response = post(service_client, {"texts": texts})
    assert response.status_code == 200, response.text
    body = ClassifyResponse.model_validate(response.json())
    assert body.model == published_single["tag"]
    assert len(body.results) == 3
    _, path, card = resolve("classification", published_single["tag"])
    expected = Pipeline.from_artifact(path, card).predict(texts)
    for got, want in zip(body.results, expected, strict=True):
        assert got.label == want["label"] and got.label in card.labels
        assert got.score == pytest.approx(want["score"], abs=1e-5)
        assert sum(got.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert got.truncated is False
    assert "labels" not in response.json()["results"][0], "null fields are left out"


def test_learned_labels_come_back(service_client):
    body = post(service_client, {"texts": ["great wonderful excellent", "awful terrible worst"]}).json()
    assert [r["label"] for r in body["results"]] == ["positive", "negative"]


def test_long_text_is_truncated_and_says_so(service_client):
    long_text = " ".join(["great"] * 200)  # the tiny model's window is 32 tokens
    body = post(service_client, {"texts": [long_text, "fine"]}).json()
    assert [r["truncated"] for r in body["results"]] == [True, False]


def test_long_text_with_truncation_off_is_422(service_client):
    response = post(service_client, {"texts": ["fine", " ".join(["great"] * 200)], "truncate": False})
    assert_error(response, 422, "validation", "text 1 has 202 tokens", "the model takes 32", "truncate=true")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"texts": []}, 400, "texts is empty"),
        ({"texts": [""]}, 400, "text 0 is empty"),
        ({"texts": ["ok", "   "]}, 400, "text 1 is empty"),
        ({"texts": "just a string"}, 422, "texts: Input should be a valid list"),
        ({"texts": ["ok", 3]}, 422, "texts.1: Input should be a valid string"),
        ({"texts": [["nested"]]}, 422, "texts.0"),
        ({}, 422, "texts or pairs: Field required"),
        ({"texts": ["ok"], "truncate": "maybe"}, 422, "truncate"),
        ({"texts": ["ok"], "unknown": 1}, 422, "unknown: Extra inputs are not permitted"),
        ([1, 2], 422, 'the body must be a JSON object: send a JSON object such as {"texts": [...]}'),
        ({"texts": ["lone \ud800 surrogate"]}, 422, "lone surrogate"),
    ],
)
def test_bad_inputs_get_4xx_with_a_useful_message(service_client, body, status, fragment):
    data = json.dumps(body)  # ensure_ascii keeps a lone surrogate as the \ud800 escape
    response = service_client.post("/classify", content=data, headers={"content-type": "application/json"})
    assert_error(response, status, "empty" if status == 400 else "validation", fragment)


def test_invalid_json_is_400(service_client):
    response = service_client.post("/classify", content=b'{"texts": [', headers={"content-type": "application/json"})
    assert_error(response, 400, "validation", "not valid JSON")
    response = service_client.post("/classify", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


def test_texts_per_request_boundary(service_client, limits):
    limits(max_texts_per_request=5)
    assert post(service_client, {"texts": ["fine"] * 5}).status_code == 200
    assert_error(post(service_client, {"texts": ["fine"] * 6}), 422, "validation",
                 "6 texts in one request, the limit is 5", "BERTSERVE_MAX_TEXTS_PER_REQUEST")


def test_chars_per_text_boundary(service_client, limits):
    limits(max_chars_per_text=20)
    assert post(service_client, {"texts": ["a" * 20]}).status_code == 200
    assert_error(post(service_client, {"texts": ["ok", "a" * 21]}), 422, "validation",
                 "text 1 has 21 characters, the limit is 20", "BERTSERVE_MAX_CHARS_PER_TEXT")


def test_body_over_payload_limit_is_413(service_client, service_instance):
    limit = service_instance.settings.max_request_bytes
    response = post(service_client, {"texts": ["x" * (limit + 10)]})
    assert_error(response, 413, "payload_too_large", "BERTSERVE_MAX_REQUEST_BYTES")


def test_wrong_method_has_the_error_shape(service_client):
    assert_error(service_client.get("/classify"), 405, "method_not_allowed")
    assert service_client.get("/nope").status_code == 404


def test_no_model_for_task_is_503(service_client, service_instance, monkeypatch):
    monkeypatch.setattr(service_instance.served, "by_name", {})
    monkeypatch.setattr(service_instance.served, "defaults", {})
    assert_error(post(service_client, {"texts": ["fine"]}), 503, "unavailable", "bertserve train classification")


def test_unexpected_failure_is_a_generic_500(service_client, service_instance, monkeypatch):
    model = service_instance.models["classification"]

    def explode(items):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(model.pipeline, "forward", explode)
    response = post(service_client, {"texts": ["fine"]})
    body = assert_error(response, 500, "backend")
    assert "secret" not in response.text and "passwd" not in response.text
    assert "server log" in body["error"]


def test_info_lists_models_with_card_and_parity(service_client, published_single):
    info = service_client.get("/info").json()
    model = info["models"]["classification"]
    assert model["tag"] == published_single["tag"]
    assert model["demo"] is False and model["variant"] == published_single["variant"]
    card = model["card"]
    assert card["labels"] == ["negative", "positive"] and card["parity"]["variants"]["int8"]
    assert "accuracy" in card["metrics"]
    assert "source" not in card["data"]["train"], "/info does not disclose local paths"
    assert "/" not in card["base_model"], card["base_model"]  # the tiny base is a local directory


def test_openapi_document_lists_the_routes(service_client):
    spec = service_client.get("/openapi.json").json()
    assert "/classify" in spec["paths"] and "/info" in spec["paths"]
    assert "422" in spec["paths"]["/classify"]["post"]["responses"]


def test_many_concurrent_requests_are_all_answered(service_client):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"the film was {w}" for w in ("great", "awful", "fine", "boring")] * 6
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda t: post(service_client, {"texts": [t]}), texts))
    assert all(r.status_code == 200 for r in responses)
    labels = {t: r.json()["results"][0]["label"] for t, r in zip(texts, responses, strict=True)}
    alone = post(service_client, {"texts": list(labels)}).json()["results"]
    assert [r["label"] for r in alone] == list(labels.values()), "batching does not change answers"


def test_sub_batches_respect_the_token_budget():
    lengths = [5, 100, 7, 6, 98, 8]
    groups = plan_sub_batches(lengths, max_tokens=200, max_size=64)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        assert len(group) * max(lengths[i] for i in group) <= 200
    # the short texts ride together, not padded to 100
    assert {0, 2, 3, 5} in [set(g) for g in groups]
    assert plan_sub_batches([3] * 10, max_tokens=10_000, max_size=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_responses_carry_stage_timings(service_client):
    response = post(service_client, {"texts": ["a calm and pleasant film"]})
    assert response.status_code == 200
    entries = [dict(p.split("=", 1) if "=" in p else (p, "") for p in part.strip().split(";"))
               for part in response.headers["server-timing"].split(",")]
    named = {next(iter(e)): e for e in entries}  # W3C Server-Timing: name;dur=ms or name;desc="..."
    stages = {name: e["dur"] for name, e in named.items() if "dur" in e}
    assert set(stages) == {"tokenize", "queue", "inference"}
    assert named["model"]["desc"] == '"classification"'  # the served model that answered
    assert all(float(ms) >= 0 for ms in stages.values()) and float(stages["inference"]) > 0
    # errors answered before any work carry none
    assert "server-timing" not in post(service_client, {"texts": []}).headers


def test_batches_record_tokens_and_padding(service_client, service_instance):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": "classification", "task": "classification",
                                                **labels}) or 0.0

    texts = ["short one", "a much longer text " * 12]
    pipeline = service_instance.models["classification"].pipeline
    short, long = sorted(group[0].n_tokens for group in pipeline.featurize(texts))
    before = {kind: sample("bertserve_tokens_total", kind=kind) for kind in ("text", "padding")}
    passes = sample("bertserve_batch_size_count")
    cpu = sample("bertserve_forward_cpu_seconds_total")
    assert post(service_client, {"texts": texts}).status_code == 200
    assert sample("bertserve_forward_cpu_seconds_total") > cpu  # the forward pass's thread CPU, counted
    # alone in its batch, both texts fit one forward pass: the short one is padded to the long one
    assert sample("bertserve_batch_size_count") == passes + 1
    assert sample("bertserve_tokens_total", kind="text") - before["text"] == short + long
    assert sample("bertserve_tokens_total", kind="padding") - before["padding"] == long - short
    assert sample("bertserve_stage_seconds_count", stage="queue") > 0


def test_a_request_split_across_batches_keeps_one_timing_record():
    """BentoML's dispatcher slices a request with more windows than a batch holds (list slicing)."""
    from service.batching import Job

    job = Job(["w1", "w2", "w3"])
    first, second = job[0:2], job[2:3]
    assert isinstance(first, Job) and list(first) == ["w1", "w2"] and job[1] == "w2"
    first.ran(10.0, 11.0)
    second.ran(11.5, 12.0)
    assert job.times == {"started": 10.0, "finished": 12.0}


def test_each_request_of_a_batch_is_answered_when_its_sub_batch_has_run():
    """A batch of short and long texts runs in length-sorted sub-batches; the short request's rows
    are handed over after the first pass, not after the whole batch (the batch-wide wait was most of
    the tail latency at half the peak)."""
    from types import SimpleNamespace

    import numpy as np

    from service.batching import Batcher, Job

    passes: list[list[int]] = []
    delivered: list[tuple[int, int, int]] = []  # (request, rows, passes run by then)

    class Pipeline:
        card = SimpleNamespace(task="classification")

        def forward(self, items):
            passes.append([item.n_tokens for item in items])
            return [np.full(2, item.n_tokens) for item in items]

    batcher = Batcher(Pipeline(), enabled=True, max_batch_size=64, max_latency_ms=1000, max_batch_tokens=150,
                      name="early-delivery")
    item = lambda n: SimpleNamespace(n_tokens=n)  # noqa: E731
    jobs = [Job([item(100), item(90)]), Job([item(5), item(6)]), Job([])]
    out = batcher.run(jobs, lambda r, rows: delivered.append((r, len(rows), len(passes))))
    assert passes == [[5, 6], [90], [100]]  # the token budget keeps the long texts apart
    assert delivered[0] == (1, 2, 1)  # the short request: after the first of three passes
    assert (0, 2, 3) in delivered and (2, 0, 3) in delivered and len(delivered) == 3
    assert [[int(r[0]) for r in rows] for rows in out] == [[100, 90], [5, 6], []]
    assert jobs[1].times["finished"] <= jobs[0].times["finished"]


def test_workers_default_to_one_per_core_with_one_thread_each(monkeypatch):
    from service.settings import ServiceSettings, usable_cores

    monkeypatch.delenv("BERTSERVE_WORKERS", raising=False)  # the suite pins one (tests/conftest.py)
    monkeypatch.delenv("BERTSERVE_THREADS", raising=False)
    settings = ServiceSettings()
    assert settings.workers == 0 and settings.worker_count() == min(4, usable_cores())
    assert settings.intra_op_threads() == max(1, usable_cores() // settings.worker_count())
    assert settings.keepalive_requests == 20


def test_keep_alive_connections_are_closed_every_n_requests_with_several_workers(service_client, limits):
    """BERTSERVE_KEEPALIVE_REQUESTS: workers share one listening socket, so a worker can hold most
    long-lived connections; the Nth answer on a connection says `Connection: close` (several workers only)."""
    body = {"texts": ["a calm and pleasant film"]}
    limits(workers=2, keepalive_requests=3)
    closes = [i for i in range(9) if post(service_client, body).headers.get("connection") == "close"]
    assert len(closes) == 3 and closes[1] - closes[0] == closes[2] - closes[1] == 3  # every third answer
    # a request counts as many as the texts it runs: a connection carrying 2 texts a request closes every second
    limits(workers=2, keepalive_requests=4)
    two = {"texts": ["a calm and pleasant film", "a dull one"]}
    closes = [i for i in range(6) if post(service_client, two).headers.get("connection") == "close"]
    assert closes == [1, 3, 5]
    limits(workers=1, keepalive_requests=3)
    assert all(post(service_client, body).headers.get("connection") is None for _ in range(4))
    limits(workers=2, keepalive_requests=0)
    assert all(post(service_client, body).headers.get("connection") is None for _ in range(4))


def test_sub_batches_cut_where_padding_costs_more_than_a_pass():
    from itertools import combinations
    from random import Random

    from bertserve.runtime import CALL_COST_TOKENS

    # one batch of short and long texts under the budget: two passes, not one padded to 60
    groups = plan_sub_batches([10] * 8 + [60] * 8, max_tokens=8192, max_size=64)
    assert sorted(map(sorted, groups)) == [list(range(8)), list(range(8, 16))]
    # texts of nearly the same length are not split for nothing
    assert len(plan_sub_batches([20, 21, 22, 23], max_tokens=8192, max_size=64)) == 1

    def cost(lengths, groups):
        return sum(len(g) * max(lengths[i] for i in g) + CALL_COST_TOKENS for g in groups)

    rng = Random(0)
    for _ in range(50):  # the plan is the cheapest cut of the sorted lengths (brute force)
        lengths = [rng.randint(3, 120) for _ in range(rng.randint(1, 8))]
        ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(cost(lengths, [ordered[a:b] for a, b in zip((0, *cuts), (*cuts, len(ordered)), strict=True)])
                   for k in range(len(ordered)) for cuts in combinations(range(1, len(ordered)), k))
        assert cost(lengths, plan_sub_batches(lengths, max_tokens=10**6, max_size=64)) == best


def _slow_batches(batcher, monkeypatch, seconds: float) -> list[int]:
    """Make each batch take `seconds`; returns the number of requests in each batch run."""
    import time

    sizes: list[int] = []
    run = batcher.run

    def slow(jobs, deliver=None):
        sizes.append(len(jobs))
        time.sleep(seconds)
        return run(jobs, deliver)

    monkeypatch.setattr(batcher, "run", slow)
    return sizes


def test_requests_queued_while_the_model_runs_form_the_next_batch(service_client, service_instance, monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    batcher = service_instance.models["classification"].batcher
    assert batcher.mode == "continuous"
    sizes = _slow_batches(batcher, monkeypatch, 0.3)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, service_client, {"texts": ["the first one"]})
        time.sleep(0.1)  # the model is busy with the first request; these three wait together
        rest = list(pool.map(lambda t: post(service_client, {"texts": [t]}), ["b b", "c c", "d d"]))
    assert first.result().status_code == 200 and all(r.status_code == 200 for r in rest)
    assert sizes == [1, 3]


def test_requests_waiting_past_the_latency_budget_get_503(service_client, service_instance, monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    batcher = service_instance.models["classification"].batcher
    _slow_batches(batcher, monkeypatch, 0.4)
    monkeypatch.setattr(batcher, "max_latency_ms", 100)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, service_client, {"texts": ["the first one"]})
        time.sleep(0.1)
        rest = list(pool.map(lambda t: post(service_client, {"texts": [t]}), ["b b", "c c"]))
    assert first.result().status_code == 200
    assert [r.status_code for r in rest] == [503, 503]
    assert "latency budget" in rest[0].json()["error"] and rest[0].json()["error_type"] == "unavailable"
    assert post(service_client, {"texts": ["afterwards"]}).status_code == 200  # and it recovers


def test_api_key_guards_inference_routes_only(service_client, limits):
    from pydantic import SecretStr

    limits(api_key=SecretStr("s3cret-key"))
    body = {"texts": ["a fine film"]}
    missing = post(service_client, body)
    assert_error(missing, 401, "unauthorized", "Authorization: Bearer")
    assert missing.headers["www-authenticate"] == "Bearer" and "s3cret" not in missing.text
    assert post(service_client, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(service_client, body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    for path in ("/livez", "/readyz", "/info"):  # health and info stay open (GET)
        assert service_client.get(path).status_code == 200, path


def test_concurrency_limit_answers_429_at_once(service_client, service_instance, limits, monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    _slow_batches(service_instance.models["classification"].batcher, monkeypatch, 0.5)
    limits(max_concurrent_requests=2)
    with ThreadPoolExecutor(3) as pool:
        at_limit = [pool.submit(post, service_client, {"texts": [t]}) for t in ("one", "two")]
        time.sleep(0.15)
        started = time.perf_counter()
        over = post(service_client, {"texts": ["three"]})
        waited = time.perf_counter() - started
    assert [f.result().status_code for f in at_limit] == [200, 200]  # at the limit: served
    assert_error(over, 429, "overloaded", "BERTSERVE_MAX_CONCURRENT_REQUESTS")  # one past: refused
    assert over.headers["retry-after"] == "1" and waited < 0.3  # at once, not after the queue
    assert post(service_client, {"texts": ["four"]}).status_code == 200  # the slots were freed


def test_cors_is_off_unless_origins_are_configured():
    import subprocess
    import sys

    # BentoML's whole app, its models not loaded: a preflight, and a POST that the HTTP guard answers
    # itself (a 503, no model yet), which sits inside CORS and must carry its header too
    code = """
import json, os
from starlette.testclient import TestClient
from service import BertServe
client = TestClient(BertServe.to_asgi(), raise_server_exceptions=False)
origin = {"Origin": "https://app.example"}
r = client.options("/classify", headers={**origin, "Access-Control-Request-Method": "POST"})
answer = client.post("/classify", json={"texts": ["a"]}, headers=origin)
print(json.dumps([r.headers.get("access-control-allow-origin"), answer.status_code,
                  answer.headers.get("access-control-allow-origin")]))
"""
    def origin(env: dict) -> list:
        import json
        import os

        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert origin({}) == [None, 503, None]
    allowed = "https://app.example"
    assert origin({"BERTSERVE_CORS_ORIGINS": f'["{allowed}"]'}) == [allowed, 503, allowed]


def test_request_over_its_time_budget_is_504(service_client, service_instance, limits, monkeypatch):
    _slow_batches(service_instance.models["classification"].batcher, monkeypatch, 0.6)
    limits(request_timeout_s=0.2)
    assert_error(post(service_client, {"texts": ["slow"]}), 504, "timeout", "BERTSERVE_REQUEST_TIMEOUT_S")
    monkeypatch.undo()  # the model is fast again and the budget back to normal: the service answers
    limits(request_timeout_s=30)
    assert post(service_client, {"texts": ["fast"]}).status_code == 200


# Every per-request limit on every endpoint it applies to: (setting, value, route, body with n units).
def _qa(n_items: int = 1, context: str = "Paris is in France.") -> dict:
    return {"items": [{"question": "Where is Paris?", "context": context}] * n_items}


LIMIT_CASES = [
    ("max_texts_per_request", 3, "/classify", lambda n: {"texts": ["fine"] * n}),
    ("max_texts_per_request", 3, "/embed", lambda n: {"texts": ["fine"] * n}),
    ("max_texts_per_request", 3, "/similarity", lambda n: {"source_sentence": "a", "sentences": ["b"] * n}),
    ("max_texts_per_request", 3, "/v1/embeddings", lambda n: {"input": ["fine"] * n}),
    ("max_texts_per_request", 3, "/ner", lambda n: {"texts": ["Bob lives in Paris."] * n}),
    ("max_texts_per_request", 3, "/qa", lambda n: _qa(n)),
    ("max_chars_per_text", 30, "/classify", lambda n: {"texts": ["ok", "a" * n]}),
    ("max_chars_per_text", 30, "/embed", lambda n: {"texts": ["a" * n]}),
    ("max_chars_per_text", 30, "/similarity", lambda n: {"source_sentence": "a" * n, "sentences": ["b"]}),
    ("max_chars_per_text", 30, "/similarity", lambda n: {"source_sentence": "a", "sentences": ["b" * n]}),
    ("max_chars_per_text", 30, "/v1/embeddings", lambda n: {"input": "a" * n}),
    ("max_chars_per_text", 30, "/qa", lambda n: {"items": [{"question": "Where?".ljust(n), "context": "Paris."}]}),
    ("max_chars_per_document", 60, "/ner", lambda n: {"texts": ["b" * n]}),
    ("max_chars_per_document", 60, "/qa", lambda n: _qa(1, "c" * n)),
]


@pytest.mark.parametrize(("setting", "value", "route", "body"), LIMIT_CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(LIMIT_CASES)])
def test_every_limit_at_the_limit_is_200_one_past_is_422(service_client, limits, setting, value, route, body):
    limits(**{setting: value})
    at = service_client.post(route, json=body(value))
    assert at.status_code == 200, at.text
    assert_error(service_client.post(route, json=body(value + 1)), 422, "validation",
                 f"the limit is {value}", f"BERTSERVE_{setting.upper()}")


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_request_bytes_at_the_limit_is_200_one_past_is_413(service_client, limits, streamed):
    limit = 1024
    limits(max_request_bytes=limit)

    def body(size: int) -> bytes:
        raw = json.dumps({"texts": ["x"]}).encode()
        return json.dumps({"texts": ["x" * (1 + size - len(raw))]}).encode()

    def send(data: bytes):
        content = iter([data[:500], data[500:]]) if streamed else data  # a generator goes out chunked
        return service_client.post("/classify", content=content, headers={"content-type": "application/json"})

    assert len(body(limit)) == limit and send(body(limit)).status_code == 200
    assert_error(send(body(limit + 1)), 413, "payload_too_large", f"over {limit} bytes", "BERTSERVE_MAX_REQUEST_BYTES")
