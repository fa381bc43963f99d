"""Fuzzing every inference endpoint of the live (in-process) service: no 5xx, ever, and every
answer matches the documented schema — the endpoint's response model, or the one error body.

Bodies are drawn from two families per endpoint: arbitrary JSON (any shape, any nesting), and
bodies of the right shape whose strings and lists are hostile (lone surrogates, control and
zero-width characters, emoji, CJK, RTL, empty strings, long runs, too many items, wrong types).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bertserve.schemas import (
    ClassifyResponse,
    EmbedResponse,
    ErrorBody,
    NerResponse,
    OpenAIEmbeddingResponse,
    QaResponse,
    SimilarityResponse,
)

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

SHAPED = {
    "/classify": st.fixed_dictionaries({"texts": TEXTS}, optional={"truncate": FLAG}),
    "/embed": st.fixed_dictionaries({"texts": TEXTS}, optional={"normalize": FLAG, "truncate": FLAG}),
    "/similarity": st.fixed_dictionaries({"source_sentence": st.one_of(HOSTILE, JSON), "sentences": TEXTS}),
    "/ner": st.fixed_dictionaries({"texts": TEXTS}),
    "/qa": st.fixed_dictionaries({"items": st.one_of(
        st.lists(st.fixed_dictionaries({"question": st.one_of(HOSTILE, JSON), "context": st.one_of(HOSTILE, JSON)}),
                 max_size=4), JSON)}),
    "/v1/embeddings": st.fixed_dictionaries({"input": st.one_of(HOSTILE, TEXTS)},
                                            optional={"encoding_format": st.sampled_from(["float", "base64", "x"]),
                                                      "dimensions": st.integers(-2, 1000)}),
}
RESPONSES: dict[str, type[BaseModel]] = {
    "/classify": ClassifyResponse, "/embed": EmbedResponse, "/similarity": SimilarityResponse,
    "/ner": NerResponse, "/qa": QaResponse, "/v1/embeddings": OpenAIEmbeddingResponse,
}


@pytest.mark.parametrize("path", list(SHAPED))
def test_fuzzed_bodies_never_get_a_5xx_and_always_match_the_schema(service_client, path):
    statuses: list[int] = []

    @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
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
