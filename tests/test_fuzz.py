"""Fuzzing every inference endpoint of the live (in-process) service: no 5xx, ever, and every
answer matches the documented schema — the endpoint's response model, or the one error body.
That includes /rerank and the pairs of /classify (the pair cross-encoder, by its name `pairs`).

Bodies are drawn from two families per endpoint: arbitrary JSON (any shape, any nesting), and
bodies of the right shape whose strings and lists are hostile (lone surrogates, control and
zero-width characters, emoji, CJK, RTL, empty strings, long runs, too many items, wrong types).
"""

from __future__ import annotations

import json
import types
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bertserve.registry import tasks
from bertserve.schemas import ClassifyResponse, ErrorBody

CASES_PER_ENDPOINT = 200

# every Unicode category, surrogates included, with the awkward ones made likely
HOSTILE = st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=40),
    st.sampled_from(["", " ", "\u200b\u200d", "\ud800", "a\udfffb", "\x00\x1b", "😀" * 30, "東京タワー",
                     "مرحبا بالعالم", "e\u0301" * 20, "word " * 200, "\n\t"]),
)
TEXTS = st.one_of(st.lists(HOSTILE, max_size=6), st.lists(st.just("ok"), min_size=60, max_size=70), HOSTILE,
                  st.integers(), st.none())
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE, inner, max_size=4),
                    max_leaves=20)
FLAG = st.one_of(st.booleans(), JSON)



def hostile(annotation: typing.Any) -> st.SearchStrategy:
    """Values of roughly the declared type with hostile contents (or of another type)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # a type with its documented limits (bertserve.schemas.Documented)
        return hostile(args[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(hostile(a) for a in args if a is not type(None)), st.none())
    if origin is typing.Literal:
        return st.sampled_from([*args, "x"])
    if origin is tuple:  # a pair: two hostile strings, or the wrong number of them
        return st.one_of(st.tuples(*(hostile(a) for a in args)).map(list), st.lists(HOSTILE, max_size=3), JSON)
    if origin is list:
        (item,) = args
        return TEXTS if item is str else st.one_of(st.lists(hostile(item), max_size=4), JSON)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return shaped(annotation)
    return {str: st.one_of(HOSTILE, JSON), bool: FLAG, int: st.integers(-2, 1000)}.get(annotation, JSON)


def shaped(model: type[BaseModel]) -> st.SearchStrategy:
    """Bodies of the request model's shape: its required fields always, the others sometimes."""
    fields = model.model_fields
    return st.fixed_dictionaries({n: hostile(f.annotation) for n, f in fields.items() if f.is_required()},
                                 optional={n: hostile(f.annotation) for n, f in fields.items() if not f.is_required()})


# every route of every registered task (a route whose task the in-process service serves no model
# of is skipped: conftest's service serves the built-in tasks)
ROUTES = {route.path: (spec.name, route) for spec in tasks().values() for route in spec.routes}
SHAPED = {path: shaped(route.request) for path, (_, route) in ROUTES.items()}
RESPONSES: dict[str, type[BaseModel]] = {path: route.response for path, (_, route) in ROUTES.items()}


@pytest.mark.parametrize("path", list(SHAPED))
def test_fuzzed_bodies_never_get_a_5xx_and_always_match_the_schema(service_client, service_instance, path):
    if not service_instance.served.names(ROUTES[path][0]):
        pytest.skip(f"the test service serves no {ROUTES[path][0]} model")
    statuses: list[int] = []

    # the route's documented example first (a body that must get a 200), then the generated ones
    documented = (ROUTES[path][1].request.model_config.get("json_schema_extra") or {}).get("examples", [{}])[0]

    @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @example(body=documented)
    @given(body=st.one_of(SHAPED[path], JSON))
    def check(body):
        # ensure_ascii: lone surrogates travel as \\ud800 escapes, as a JSON client would send them
        response = service_client.post(path, content=json.dumps(body, ensure_ascii=True),
                                       headers={"content-type": "application/json"})
        assert response.status_code < 500, (body, response.text)
        statuses.append(response.status_code)
        model = RESPONSES[path] if response.status_code == 200 else ErrorBody
        model.model_validate(response.json())

    check()
    assert len(statuses) >= CASES_PER_ENDPOINT
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)  # both paths were exercised


PAIRS = st.lists(st.tuples(HOSTILE, HOSTILE).map(list), min_size=1, max_size=6)


def test_fuzzed_pairs_to_the_pair_model_never_get_a_5xx(service_client):
    statuses: list[int] = []

    @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(pairs=st.one_of(PAIRS, st.lists(st.just(["ok", "fine"]), min_size=60, max_size=70), JSON),
           truncate=FLAG)
    def check(pairs, truncate):
        body = {"pairs": pairs, "model": "pairs", "truncate": truncate}
        response = service_client.post("/classify", content=json.dumps(body, ensure_ascii=True),
                                       headers={"content-type": "application/json"})
        assert response.status_code < 500, (body, response.text)
        statuses.append(response.status_code)
        model = ClassifyResponse if response.status_code == 200 else ErrorBody
        model.model_validate(response.json())

    check()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)


@pytest.mark.parametrize("raw, content_type", [
    (b'{"texts": ["\xff\xfe invalid utf-8"]}', "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
    (b"texts=hello", "application/x-www-form-urlencoded"),
    (b'{"texts": ["hello"]}', "text/plain"),
    (json.dumps({"texts": ["a"] * 5000}).encode(), "application/json"),
    (json.dumps({"texts": ["long text " * 2500]}).encode(), "application/json"),
    (b"", "application/json"),
])
def test_hand_written_hostile_bodies_get_a_4xx_or_a_full_answer(service_client, raw, content_type):
    response = service_client.post("/classify", content=raw, headers={"content-type": content_type})
    assert response.status_code < 500, response.text
    model = ClassifyResponse if response.status_code == 200 else ErrorBody
    model.model_validate(response.json())


def test_fuzzed_model_names_on_the_report_route_get_a_page_or_a_404(service_client):
    """GET /models/{name}/report: hostile names (path separators, dots, percent escapes, Unicode)
    are only ever looked up among the served names: a page for a served one, else a 404 in the one
    error shape; never a file from elsewhere, never a 5xx."""
    from urllib.parse import quote

    served = set(service_client.get("/info").json()["models"])
    statuses: list[int] = []

    # a URL carries UTF-8: lone surrogates cannot be sent in one (the body fuzzing above has them)
    encodable = HOSTILE.filter(lambda s: bool(s) and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))

    @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(name=st.one_of(st.sampled_from(sorted(served)), encodable,
                          st.sampled_from(["..", "../..", "%2e%2e", "bertserve.json", "/etc/passwd", "~", "*"])))
    @example(name="../../bertserve.json")
    def check(name):
        response = service_client.get(f"/models/{quote(name, safe='/%.~')}/report")
        assert response.status_code < 500, (name, response.text)
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert name in served and response.headers["content-type"].startswith("text/html")
            assert b"bertserve model report" in response.content
        else:
            assert response.status_code in (404, 405), (name, response.status_code)
            ErrorBody.model_validate(response.json())

    check()
    assert 200 in statuses and 404 in statuses
