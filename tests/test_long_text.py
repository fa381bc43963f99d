"""Long texts read whole (`long_text=chunk`): windows, aggregation, the policy's resolution and its
refusals, through the runtime and the in-process service."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bertserve.artifact import read_card
from bertserve.runtime import CHUNK, MAX, LongText, Pipeline, window_span
from tests.conftest import FILLER


def neutral_body(chars: int, seed: int = 0) -> str:
    """Words the tiny sentiment model saw in both classes (no sentiment word), `chars` long."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(str(rng.choice(FILLER)))
    return " ".join(words)[:chars].rstrip()


VERDICT = {"positive": "in the end it was great wonderful excellent superb love",
           "negative": "in the end it was awful terrible worst boring hate"}


def review(label: str, chars: int = 20_000) -> str:
    """A `chars`-character review whose sentiment is stated only in its last paragraph."""
    end = "\n\n" + VERDICT[label]
    return neutral_body(chars - len(end)) + end


@pytest.fixture(scope="module")
def sentiment(published_single) -> Pipeline:
    path = published_single["artifact"]
    return Pipeline.from_artifact(path, read_card(path), threads=1)


def test_a_short_text_is_one_window_and_answers_as_truncated(sentiment):
    texts = ["the movie was great", "a boring plot and the acting was bad", "it is fine"]
    cut = sentiment.outputs(texts)
    whole = sentiment.outputs(texts, long_text=LongText(CHUNK))
    assert np.array_equal(cut, whole)
    assert [len(f) for f in sentiment.featurize(texts, chunk=True)] == [1, 1, 1]


def test_chunk_is_the_token_weighted_mean_of_its_windows(sentiment):
    text = review("negative", 2_000)
    windows = sentiment.featurize([text], chunk=True)[0]
    assert len(windows) > 5
    rows = np.stack(sentiment.forward(windows)).astype(np.float64)
    weights = np.array([w.n_tokens for w in windows], dtype=np.float64)
    whole = sentiment.outputs([text], long_text=LongText(CHUNK))[0]
    np.testing.assert_allclose(whole, weights @ rows / weights.sum(), rtol=1e-5, atol=1e-6)
    # windows cover the text: the first starts at its start, the last ends at its end, neighbours overlap
    spans = [window_span(w) for w in windows]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(spans))
    strongest = sentiment.outputs([text], long_text=LongText(CHUNK, MAX))[0]
    probs = np.exp(rows) / np.exp(rows).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(strongest, rows[int(probs.max(axis=1).argmax())], rtol=1e-6)


def test_a_20000_character_review_with_its_verdict_last_is_read_right_only_whole(sentiment):
    """Truncated, the model sees only the neutral body, so it gives both reviews the same label
    and gets one wrong; read whole, keeping the window the model is surest of, both come out
    right. The token-weighted mean does not: ~640 windows of body outweigh the one verdict window
    (the body leans one way for the model, as neutral text does for any binary classifier), so
    the mean answers with the body's lean, like truncation (README: Long texts)."""
    reviews = {label: review(label) for label in VERDICT}
    assert all(len(t) == 20_000 for t in reviews.values())
    cut = sentiment.predict(list(reviews.values()))
    assert cut[0]["label"] == cut[1]["label"], "truncated, the two reviews look the same to the model"
    assert [r["label"] for r in cut] != list(reviews), "truncate gets one of them wrong"
    whole = sentiment.predict(list(reviews.values()), long_text=LongText(CHUNK, MAX))
    assert [r["label"] for r in whole] == list(reviews), whole
    mean = sentiment.predict(list(reviews.values()), long_text=LongText(CHUNK))
    assert [r["label"] for r in mean] == [r["label"] for r in cut], mean


def test_classify_chunk_over_http_reports_windows_and_the_deciding_window(service_client):
    text = review("negative", 3_000)
    body = service_client.post("/classify", json={"texts": [text, "it was great"], "long_text": "chunk",
                                                  "aggregate": "max"}).json()
    long, short = body["results"]
    assert long["label"] == "negative" and long["windows"] > 3 and long["truncated"] is False
    window = long["window"]
    assert window["index"] == long["windows"] - 1, "the verdict is in the last window"
    assert "awful" in text[window["start"]:window["end"]]
    assert short["windows"] == 1
    cut = service_client.post("/classify", json={"texts": [text]}).json()["results"][0]
    assert cut["truncated"] is True and "windows" not in cut


@pytest.mark.parametrize(("body", "says"), [
    ({"truncate": False, "long_text": "chunk"}, "not both"),
    ({"truncate": True, "long_text": "truncate"}, "not both"),
    ({"long_text": None}, "long_text"),
    ({"aggregate": "max"}, "aggregate applies only"),
    ({"long_text": "truncate", "aggregate": "mean"}, "aggregate applies only"),
    ({"long_text": "sometimes"}, "long_text"),
])
def test_long_text_refusals_say_what_to_send(service_client, body, says):
    response = service_client.post("/classify", json={"texts": ["it was great"], **body})
    assert response.status_code == 422, response.text
    assert says in response.json()["error"]


def test_long_text_error_refuses_a_long_text(service_client):
    response = service_client.post("/classify", json={"texts": [review("positive", 2_000)], "long_text": "error"})
    assert response.status_code == 422 and "tokens" in response.json()["error"]


def test_pairs_are_not_chunked(service_client):
    response = service_client.post("/classify", json={"pairs": [["a good movie", "a great movie"]],
                                                      "long_text": "chunk", "model": "pairs"})
    assert response.status_code == 422 and "pairs" in response.json()["error"]
    assert service_client.post("/classify", json={"pairs": [["a good movie", "a great movie"]],
                                                  "model": "pairs"}).status_code == 200


def test_embed_chunk_is_the_renormalized_mean_and_refuses_max(service_client):
    text = neutral_body(2_000, seed=3)
    body = service_client.post("/embed", json={"texts": [text, "a film"], "long_text": "chunk"}).json()
    assert body["windows"][0] > 3 and body["windows"][1] == 1 and body["truncated"] == [False, False]
    assert abs(np.linalg.norm(body["embeddings"][0]) - 1) < 1e-5
    cut = service_client.post("/embed", json={"texts": [text]}).json()
    assert cut["truncated"] == [True] and cut.get("windows") is None
    assert float(np.dot(cut["embeddings"][0], body["embeddings"][0])) < 0.9999
    refused = service_client.post("/embed", json={"texts": [text], "long_text": "chunk", "aggregate": "max"})
    assert refused.status_code == 422 and "aggregate" in refused.json()["error"]


def test_similarity_chunk_max_scores_a_long_text_by_its_best_window(service_client):
    query = "the acting was superb"
    long = neutral_body(2_000, seed=5) + " the acting was superb"
    mean = service_client.post("/similarity", json={"source_sentence": query, "sentences": [long],
                                                    "long_text": "chunk"}).json()
    best = service_client.post("/similarity", json={"source_sentence": query, "sentences": [long],
                                                    "long_text": "chunk", "aggregate": "max"}).json()
    assert best["windows"] == mean["windows"] and best["windows"][0] > 3
    assert best["scores"][0] > mean["scores"][0]


def test_the_server_default_policy_applies_when_a_request_sends_none(service_client, limits):
    text = review("negative", 2_000)
    limits(long_text="chunk")
    result = service_client.post("/classify", json={"texts": [text]}).json()["results"][0]
    assert result["windows"] > 1
    sent = service_client.post("/classify", json={"texts": [text], "truncate": True}).json()["results"][0]
    assert sent["truncated"] is True, "a request's own truncate wins over the server default"


def test_export_gates_records_and_serves_the_models_own_long_text_policy(trained_single, trained_ner,
                                                                         tmp_path_factory):
    from pathlib import Path

    from bertserve.data import Columns
    from bertserve.errors import ConfigError
    from bertserve.evaluate import evaluate
    from bertserve.runtime import TRUNCATE
    from export.pipeline import export_model
    from tests.conftest import write_jsonl

    out = tmp_path_factory.mktemp("chunked")
    result = export_model(str(trained_single), name="tiny-chunked", output=str(out / "x"), publish=False,
                          long_text=LongText(CHUNK, MAX), reference=False)
    path = Path(result["artifact"])
    card = read_card(path)
    assert card.long_text == {"policy": "chunk", "aggregate": "max"}
    pipeline = Pipeline.from_artifact(path, card, threads=1)
    assert pipeline.long_text == LongText(CHUNK, MAX)
    data = write_jsonl(out / "long.jsonl", [{"text": review(label, 3_000), "label": label} for label in VERDICT])
    assert evaluate(str(path), str(data), Columns())["metrics"]["accuracy"] == 1.0, "read whole by default"
    cut = evaluate(str(path), str(data), Columns(), long_text=LongText(TRUNCATE))
    assert cut["metrics"]["accuracy"] == 0.5 and cut["long_text"]["policy"] == "truncate"
    with pytest.raises(ConfigError, match="read every text whole"):
        export_model(str(trained_ner), name="tiny-ner-chunked", publish=False, output=str(out / "ner"),
                     long_text=LongText(CHUNK))
