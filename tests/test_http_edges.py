"""The HTTP edges: one error shape for every refusal, a route-specific fix in each message, and a
refused upload whose answer reaches the client. In process (ASGI) and against a real `bentoml serve`."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from service.http import Guard
from tests.test_service import assert_error

ROOT = Path(__file__).resolve().parents[1]
JSON = {"content-type": "application/json"}
# route -> the body example its hints must show (the route's required fields)
HINTS = {
    "/classify": '{"texts": [...]}',
    "/ner": '{"texts": [...]}',
    "/embed": '{"texts": [...]}',
    "/similarity": '{"source_sentence": "...", "sentences": [...]}',
    "/qa": '{"items": [{"question": "...", "context": "..."}, ...]}',
    "/v1/embeddings": '{"input": "..."}',
}


def documented_error_types() -> set[str]:
    """The `error_type` column of the README's error table."""
    section = (ROOT / "README.md").read_text().split("### Errors", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d{3} \|", line)]
    return {t for row in rows for t in re.findall(r"`([a-z_]+)`", row.split("|")[2])}


def check_shape(response, status: int, error_type: str, *fragments: str) -> dict:
    body = assert_error(response, status, error_type, *fragments)
    assert error_type in documented_error_types(), f"{error_type} is not in the README's error table"
    return body


def test_unknown_paths_and_wrong_methods_have_the_error_shape(service_client):
    check_shape(service_client.get("/nope"), 404, "not_found", "/docs/api")
    check_shape(service_client.post("/classify/extra", json={"texts": ["a"]}), 404, "not_found")
    wrong = service_client.get("/classify")
    check_shape(wrong, 405, "method_not_allowed", "GET is not allowed here: use POST")
    assert wrong.headers["allow"] == "POST"
    for method in ("PUT", "PATCH", "DELETE"):  # with a body the route would take by POST (schemathesis found PUT)
        wrong = service_client.request(method, "/classify", json={"texts": ["a"]})
        check_shape(wrong, 405, "method_not_allowed", f"{method} is not allowed here: use POST")
        assert wrong.headers["allow"] == "POST"
    bentoml_own = service_client.post("/readyz")  # a BentoML route, answered outside our FastAPI app
    check_shape(bentoml_own, 405, "method_not_allowed", "use")
    assert "GET" in bentoml_own.headers["allow"]
    assert service_client.get("/livez").status_code == 200  # successful answers pass untouched


def test_too_many_items_names_them_in_plain_english():
    from bertserve.errors import ValidationError
    from service.http import check_texts

    with pytest.raises(ValidationError, match=r"3 inputs in one request, the limit is 2 "
                       r"\(BERTSERVE_MAX_TEXTS_PER_REQUEST\): split `input` over several requests"):
        check_texts(["a", "b", "c"], 2, 100, "input", "input")
    with pytest.raises(ValidationError, match="3 questions in one request"):
        check_texts(["a", "b", "c"], 2, 100, "items", "question")


def test_every_error_type_the_service_uses_is_documented():
    from bertserve import errors

    def served(cls: type) -> set[str]:  # the error classes with an HTTP status (offline ones have 500 and no route)
        own = {cls.error_type} if cls.status != 500 or cls.error_type in ("backend", "internal") else set()
        return own.union(*(served(sub) for sub in cls.__subclasses__()))

    types = served(errors.BertserveError)
    assert {"validation", "unknown_model", "overloaded", "backend"} <= types
    assert types | {"not_found", "method_not_allowed", "unsupported_media_type"} <= documented_error_types()


# --- the drain, unit level: both bounds hold against a client that never stops sending

def _settings(**values):
    defaults = dict(api_key=None, max_concurrent_requests=8, max_request_bytes=1024, max_drain_bytes=10_000,
                    max_drain_s=5.0, gc_freeze=False)
    return SimpleNamespace(**{**defaults, **values})


async def _refused(settings, chunk_delay: float):
    """Send an endless chunked body to a Guard; (messages sent, body bytes it read, seconds)."""
    read, sent = 0, []

    async def receive():
        nonlocal read
        if chunk_delay:
            await anyio.sleep(chunk_delay)
        read += 512
        return {"type": "http.request", "body": b"x" * 512, "more_body": True}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app saw an oversized body")

    started = time.monotonic()
    await Guard(app, settings)({"type": "http", "method": "POST", "path": "/classify", "headers": []},
                               receive, send)
    return sent, read, time.monotonic() - started


def test_the_drain_stops_at_its_byte_bound():
    sent, read, _ = anyio.run(_refused, _settings(), 0.0)
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error_type"] == "payload_too_large"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert 10_000 < read - 1024 <= 10_000 + 2 * 512


def test_the_drain_stops_at_its_time_bound():
    sent, _, seconds = anyio.run(_refused, _settings(max_drain_bytes=10**12, max_drain_s=0.3), 0.01)
    assert sent[0]["status"] == 413 and sent[-1]["more_body"] is False
    assert 0.3 <= seconds < 2.0


# --- against a real `bentoml serve`: what ordinary clients see

BIG = json.dumps({"texts": ["x" * 1000] * 20_000}).encode()  # 20 MB


def _chunks(data: bytes, size: int = 64 * 1024):
    return (data[i:i + size] for i in range(0, len(data), size))


def _urllib_post(url: str, data) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=JSON, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """`bentoml serve` with an empty model store: the edges answer without any model."""
    from tests.test_serve_process import start_serve, stop_serve

    tmp = tmp_path_factory.mktemp("edges")
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("BERTSERVE_MODEL_")]:
            env.delenv(name)  # tags pinned by other tests' fixtures are not in this empty store
        url, proc = start_serve(tmp, BENTOML_HOME=str(tmp / "bentoml-home"), BERTSERVE_SHUTDOWN_DRAIN_S="0")
    yield url
    stop_serve(proc)


@pytest.mark.parametrize("client", ["requests", "urllib"])
@pytest.mark.parametrize("length", ["content-length", "chunked"])
def test_a_20_mb_body_gets_its_413_through_ordinary_clients(bare_server, client, length):
    import requests

    url = f"{bare_server}/classify"
    data = BIG if length == "content-length" else _chunks(BIG)
    if client == "requests":
        response = requests.post(url, data=data, headers=JSON, timeout=60)
        status, body = response.status_code, response.json()
    else:
        status, body = _urllib_post(url, data)
    assert status == 413, body
    assert body["error_type"] == "payload_too_large" and "BERTSERVE_MAX_REQUEST_BYTES" in body["error"]


@pytest.mark.parametrize("route", list(HINTS))
def test_every_body_hint_names_the_routes_own_fields(bare_server, route):
    """Through a real server: the body is read by FastAPI's own parsing there, as in production."""
    import requests

    url, hint = f"{bare_server}{route}", HINTS[route]

    def post(data, headers=JSON):
        return requests.post(url, data=data, headers=headers, timeout=10)

    check_shape(post(b'{"x": ['), 400, "validation", "not valid JSON", hint, "Content-Type: application/json")
    check_shape(post(b""), 400, "empty", "body is empty", hint)
    check_shape(post(b'{"x": "\xff\xfe"}'), 400, "validation", "not UTF-8", hint)
    check_shape(post({"texts": "hello"}, {}), 415, "unsupported_media_type",  # curl -d without a type
                "application/x-www-form-urlencoded", "Content-Type: application/json", hint)
    check_shape(post(b'{"texts": ["a"]}', {"content-type": "text/plain"}), 415, "unsupported_media_type",
                "'text/plain'", hint)
    check_shape(post(b"[1, 2]"), 422, "validation", "must be a JSON object", hint)


def test_edges_of_a_real_server_have_the_error_shape(bare_server):
    import requests

    unknown = requests.get(f"{bare_server}/no/such/route", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found", unknown.text
    wrong = requests.post(f"{bare_server}/readyz", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error_type"] == "method_not_allowed" and wrong.headers["allow"]
    wrong = requests.get(f"{bare_server}/qa", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", wrong.text
    form = requests.post(f"{bare_server}/qa", data={"question": "why"}, timeout=10)
    assert form.status_code == 415 and '{"items": [{"question"' in form.json()["error"], form.text
    empty = requests.post(f"{bare_server}/v1/embeddings", data=b"", headers=JSON, timeout=10)
    assert empty.status_code == 400 and empty.json()["error_type"] == "empty" and '"input"' in empty.json()["error"]


def test_a_json_body_without_a_content_type_is_told_to_send_one(bare_server):
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(bare_server)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    connection.putrequest("POST", "/classify")  # no Content-Type header at all
    connection.putheader("content-length", "19")
    connection.endheaders(b'{"texts": ["fine"]}')
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 415 and body["error_type"] == "unsupported_media_type", body
    assert "without a Content-Type" in body["error"] and '{"texts": [...]}' in body["error"]
