"""Sentence pairs the way BERT reads them: pair data, a cross-encoder through training, the parity
gate and the live service's /classify, and reranking (`bertserve train rerank`, /rerank)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertserve.data import Columns, load_examples
from bertserve.errors import DataError
from bertserve.metrics import ranking_metrics
from tests.conftest import tiny_config, write_jsonl

# --- data -------------------------------------------------------------------------------------


def test_jsonl_rows_with_text_pair_are_pairs(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "a b", "text_pair": "c d", "label": 1.5}])
    assert load_examples(str(path), Columns()) == [{"text": "a b", "text_pair": "c d", "label": 1.5}]


def test_tsv_pairs_by_column_name_and_position(tmp_path):
    named = tmp_path / "named.tsv"
    named.write_text('s1\ts2\tscore\nA "quoted" one\tother\t3.2\n')
    assert load_examples(str(named), Columns(text="s1", text_pair="s2", label="score")) == [
        {"text": 'A "quoted" one', "text_pair": "other", "label": "3.2"}]
    plain = tmp_path / "plain.tsv"
    plain.write_text("x\t2.5\tfirst\tsecond\n")
    assert load_examples(str(plain), Columns(text="2", text_pair="3", label="1", header=False))[0] == {
        "text": "first", "text_pair": "second", "label": "2.5"}


def test_pair_data_errors_say_how_to_fix_them(tmp_path):
    named = tmp_path / "named.tsv"
    named.write_text("s1\tscore\na\t1\n")
    with pytest.raises(DataError, match=r"no column named 's2'.*--text-column"):
        load_examples(str(named), Columns(text="s1", text_pair="s2", label="score"))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, {"text": "b", "text_pair": "c", "label": 0}])
    with pytest.raises(DataError, match=r"mixed.jsonl:2: .*single texts or pairs, not both"):
        load_examples(str(mixed), Columns())
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"text": "a", "text_pair": "c", "label": 1}, {"text": "b", "label": 0}])
    with pytest.raises(DataError, match=r"missing.jsonl:2: no field 'text_pair'"):
        load_examples(str(missing), Columns())
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "a", "text_pair": "  ", "label": 1}])
    with pytest.raises(DataError, match=r"empty.jsonl:1: the second text of the pair"):
        load_examples(str(empty), Columns())


def test_pairs_are_cut_longest_side_first(tiny_base):
    from bertserve.runtime import TextEncoder

    encoder = TextEncoder(tiny_base / "tokenizer.json", 12)
    short, long = "good film", " ".join(["the movie"] * 20)
    (item,) = encoder.encode([(short, long)])
    assert item.truncated and item.n_tokens == 12
    first = item.encoding.type_ids.count(0)
    assert first == 4  # [CLS] good film [SEP]: the short side (a query) kept whole
    (plain,) = encoder.encode([(short, "fine")])
    assert not plain.truncated and set(plain.encoding.type_ids) == {0, 1}
    with pytest.raises(Exception, match=r"pair 0 has \d+ tokens and the model takes 12"):
        encoder.encode([(short, long)], truncate=False)


# --- training and the gate ----------------------------------------------------------------------


def test_a_pair_regression_trains_and_passes_the_gate_on_spearman(trained_pairs, published_pairs):
    from bertserve.artifact import read_card

    card = read_card(trained_pairs)
    assert card.problem_type == "regression" and card.primary_metric == "spearman"
    assert card.metrics["spearman"] > 0.5, card.metrics
    validation = [json.loads(line) for line in (trained_pairs / "validation.jsonl").read_text().splitlines()]
    assert "text_pair" in validation[0]  # the gate reads pairs back
    assert published_pairs["metric"] == "spearman" and published_pairs["parity"]["int8"]["passed"]


def test_a_reranker_trains_on_mrr_and_is_gated_on_it(trained_rerank, published_rerank):
    from bertserve.artifact import read_card

    card = read_card(trained_rerank)
    assert card.task == "rerank" and card.primary_metric == "mrr@10"
    assert card.labels == ["0", "1"]
    assert card.metrics["mrr@10"] > 0.9 and card.metrics["queries"] == 20, card.metrics
    assert published_rerank["metric"] == "mrr@10"
    assert all(v["passed"] for v in published_rerank["parity"].values()), published_rerank


def test_training_refuses_pairs_against_single_texts(tiny_base, tmp_path):
    from training import run_training

    train = write_jsonl(tmp_path / "t.jsonl", [{"text": f"good {i}", "text_pair": "b", "label": i % 2} for i in range(8)])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": f"bad {i}", "label": i % 2} for i in range(4)])
    with pytest.raises(DataError, match="training data holds pairs and the validation data single texts"):
        run_training(tiny_config(tiny_base, train, tmp_path / "out", validation=str(val)))


@pytest.mark.parametrize("rows, message", [
    ([{"query": f"q{i // 3}", "passage": "p", "label": i % 3} for i in range(12)], "two classes"),
    ([{"query": f"q{i}", "passage": "p", "label": i % 2} for i in range(12)], "has one passage"),
    ([{"text": f"q{i // 2}", "label": i % 2} for i in range(12)], "text-pair-column"),
])
def test_rerank_training_refuses_what_cannot_rank(tiny_base, tmp_path, rows, message):
    from training import run_training

    train = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=message):
        run_training(tiny_config(tiny_base, train, tmp_path / "out", task="rerank", validation=str(train)))


def test_ranking_metrics():
    m = ranking_metrics([[0.1, 0.9, 0.5], [0.8, 0.2], [0.3, 0.3]], [[False, False, True], [True, False], [False, False]])
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2) and m["recall@1"] == 0.5
    assert m["queries"] == 2 and m["queries_without_relevant"] == 1
    tie = ranking_metrics([[0.5, 0.5]], [[False, True]])  # ties go to the earlier text, as /rerank sorts
    assert tie["mrr@10"] == 0.5


# --- QNLI from SQuAD ---------------------------------------------------------------------------


def test_the_sentence_splitter():
    from bertserve.data_qnli import split_sentences

    text = 'It rained. "Why?" he asked! The U.S. Army left in 1990. 3 more came.  End'
    spans = [text[a:b] for a, b in split_sentences(text)]
    # the stated fault: an abbreviation before a capital ends a sentence
    assert spans == ["It rained.", '"Why?" he asked!', "The U.S.", "Army left in 1990.", "3 more came.", "End"]
    other = "e.g. this and that"
    assert [other[a:b] for a, b in split_sentences(other)] == [other]


def test_qnli_rows_label_the_sentence_holding_the_answer(tmp_path):
    from bertserve_cli import main

    context = "Paris is in France. The Seine flows through it. It has many museums."
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "What river?", "answers": [{"answer_start": context.index("Seine"), "text": "Seine"}]},
        {"id": "q2", "question": "Where?", "answers": [{"answer_start": 9, "text": "France"}]}]}]}]}
    source = tmp_path / "squad.json"
    source.write_text(json.dumps(squad))
    out = tmp_path / "qnli.jsonl"
    assert main(["data", "qnli", "--squad", str(source), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in rows] == [("q1", 0), ("q1", 1), ("q1", 0), ("q2", 1), ("q2", 0), ("q2", 0)]
    assert rows[1]["passage"] == "The Seine flows through it." and rows[1]["query"] == "What river?"
    assert main(["data", "qnli", "--squad", str(source), "--output", str(out), "--max-negatives", "1"]) == 0
    assert len(out.read_text().splitlines()) == 4
    from bertserve.tasks.rerank import SPEC

    inputs, gold = SPEC.split_examples(SPEC.read_examples(str(out), Columns(), None))  # query/passage found by name
    assert [len(x["texts"]) for x in inputs] == [2, 2] and [sum(g) for g in gold] == [1, 1]


def test_qnli_refuses_what_is_not_squad(tmp_path):
    from bertserve.data_qnli import write_qnli

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"SQuAD v1\.1 JSON"):
        write_qnli(bad, tmp_path / "o.jsonl")


# --- serving -------------------------------------------------------------------------------------


def offline(published: dict):
    from bertserve.evaluate import load_pipeline

    return load_pipeline(published["tag"])


def test_classify_pairs_answer_as_the_offline_pipeline(service_client, published_pairs):
    pairs = [["good great film", "a fine day"], ["the plot", "bad acting"]]
    response = service_client.post("/classify", json={"pairs": pairs, "model": "pairs"})
    assert response.status_code == 200, response.text
    values = [r["value"] for r in response.json()["results"]]
    expected = [r["value"] for r in offline(published_pairs).predict([tuple(p) for p in pairs])]
    assert values == pytest.approx(expected, abs=1e-5)
    assert response.json()["model"] == published_pairs["tag"]


def test_a_long_pair_is_cut_and_says_so(service_client):
    long = " ".join(["the movie was really good"] * 40)
    response = service_client.post("/classify", json={"pairs": [["good", long], ["good", "fine"]], "model": "pairs"})
    assert [r["truncated"] for r in response.json()["results"]] == [True, False]
    refused = service_client.post("/classify", json={"pairs": [["good", long]], "model": "pairs", "truncate": False})
    assert refused.status_code == 422 and "pair 0 has" in refused.json()["error"]


@pytest.mark.parametrize("body, status, message", [
    ({"texts": ["a"], "pairs": [["a", "b"]]}, 422, "not both"),
    ({}, 422, "texts or pairs: Field required"),
    ({"pairs": []}, 400, "pairs is empty"),
    ({"pairs": [["a"]]}, 422, "pairs.0"),
    ({"pairs": [["a", "b", "c"]]}, 422, "pairs.0"),
    ({"pairs": [["a", 3]]}, 422, "pairs.0.1"),
    ({"pairs": ["ab"]}, 422, "pairs.0"),
    ({"pairs": [["a", " "]]}, 400, "pair 0: the second text is empty"),
    ({"pairs": [["", "b"]]}, 400, "pair 0: the first text is empty"),
])
def test_bad_pairs_get_a_4xx_that_says_how_to_fix_it(service_client, body, status, message):
    response = service_client.post("/classify", json={**body, "model": "pairs"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_pair_limits(service_client, limits):
    limits(max_texts_per_request=2, max_chars_per_text=10)
    over = service_client.post("/classify", json={"pairs": [["a", "b"]] * 3, "model": "pairs"})
    assert over.status_code == 422 and "3 pairs in one request, the limit is 2" in over.json()["error"]
    long = service_client.post("/classify", json={"pairs": [["a", "b" * 11]], "model": "pairs"})
    assert long.status_code == 422 and "pair 0: the second text has 11 characters" in long.json()["error"]
    assert service_client.post("/classify", json={"pairs": [["a", "b" * 10]] * 2, "model": "pairs"}).status_code == 200


def test_a_model_answers_the_inputs_it_was_trained_on(service_client):
    to_texts_model = service_client.post("/classify", json={"pairs": [["good", "fine"]]})
    assert to_texts_model.status_code == 422
    assert "trained on single texts, and pairs were sent: send `texts`" in to_texts_model.json()["error"]
    to_pair_model = service_client.post("/classify", json={"texts": ["good"], "model": "pairs"})
    assert to_pair_model.status_code == 422 and "trained on pairs, and texts were sent" in to_pair_model.json()["error"]
    info = service_client.get("/info").json()["models"]
    assert info["pairs"]["inputs"] == "pairs" and info["classification"]["inputs"] == "texts"


def test_rerank_sorts_by_score_as_the_offline_pipeline(service_client, published_rerank):
    texts = ["the bad awful film", "a good great day", "sad poor worst", "love it wonderful"]
    response = service_client.post("/rerank", json={"query": "the movie", "texts": texts})
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert sorted(r["index"] for r in ranks) == [0, 1, 2, 3]
    scores = [r["score"] for r in ranks]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert {ranks[0]["index"], ranks[1]["index"]} == {1, 3}  # the tiny reranker learned positive words
    (expected,) = offline(published_rerank).predict([{"query": "the movie", "texts": texts}])
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(dict(enumerate(expected["relevance"])), abs=1e-5)
    assert "text" not in ranks[0] and ranks[0]["truncated"] is False


def test_rerank_options(service_client):
    texts = ["the bad film", "a good day", "sad poor", " ".join(["love"] * 300)]
    top = service_client.post("/rerank", json={"query": "q", "texts": texts, "top_n": 2, "return_text": True}).json()
    assert len(top) == 2 and all(r["text"] == texts[r["index"]] for r in top)
    raw = service_client.post("/rerank", json={"query": "q", "texts": texts, "raw_scores": True}).json()
    probs = service_client.post("/rerank", json={"query": "q", "texts": texts}).json()
    assert [r["index"] for r in raw] == [r["index"] for r in probs]
    assert any(r["score"] < 0 or r["score"] > 1 for r in raw)
    assert next(r for r in probs if r["index"] == 3)["truncated"] is True
    refused = service_client.post("/rerank", json={"query": "q", "texts": texts, "truncate": False})
    assert refused.status_code == 422 and "text 3 with the query has" in refused.json()["error"]


@pytest.mark.parametrize("body, status, message", [
    ({"query": "", "texts": ["a"]}, 400, "the query is empty"),
    ({"query": "q", "texts": []}, 400, "texts is empty"),
    ({"query": "q", "texts": ["a", " "]}, 400, "text 1 is empty"),
    ({"query": "q"}, 422, "texts"),
    ({"texts": ["a"]}, 422, "query"),
    ({"query": "q", "texts": ["a"], "top_n": 0}, 422, "top_n is 0"),
    ({"query": "q", "texts": [1]}, 422, "texts.0"),
    ({"query": "q", "texts": ["a"], "model": "pairs"}, 404, "is a classification model"),
    ({"query": "q", "texts": ["a"], "extra": 1}, 422, "extra"),
])
def test_bad_rerank_requests_get_a_4xx_that_says_how_to_fix_it(service_client, body, status, message):
    response = service_client.post("/rerank", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_rerank_limits(service_client, limits):
    limits(max_rerank_texts=3, max_chars_per_text=20)
    over = service_client.post("/rerank", json={"query": "q", "texts": ["a"] * 4})
    assert over.status_code == 422
    assert "4 texts in one request, the limit is 3 (BERTSERVE_MAX_RERANK_TEXTS)" in over.json()["error"]
    assert service_client.post("/rerank", json={"query": "q", "texts": ["a" * 20] * 3}).status_code == 200
    long = service_client.post("/rerank", json={"query": "q", "texts": ["a" * 21]})
    assert long.status_code == 422 and "text 0 has 21 characters" in long.json()["error"]
    query = service_client.post("/rerank", json={"query": "q" * 21, "texts": ["a"]})
    assert query.status_code == 422 and "the query has 21 characters" in query.json()["error"]


def test_a_querys_pairs_go_through_the_batcher_together(service_client, service_instance, monkeypatch):
    model = service_instance.served.by_name["rerank"]
    calls: list[int] = []
    batcher = model.batcher
    original = type(batcher).__call__

    async def counting(self, items):
        calls.append(len(items))
        return await original(self, items)

    monkeypatch.setattr(type(batcher), "__call__", counting)
    response = service_client.post("/rerank", json={"query": "q", "texts": [f"text {i}" for i in range(50)]})
    assert response.status_code == 200 and calls == [50]


def test_rerank_answers_the_tei_shape(service_client):
    """TEI's Rank: `index` and `score` required, `text` optional; the answer is a JSON array."""
    tei = json.loads(Path("/work/shared/reference/tei-openapi.json").read_text()) if Path(
        "/work/shared/reference/tei-openapi.json").is_file() else None
    answer = service_client.post("/rerank", json={"query": "q", "texts": ["a good day"], "return_text": True}).json()
    assert isinstance(answer, list) and {"index", "score", "text"} <= set(answer[0])
    if tei is not None:
        rank = tei["components"]["schemas"]["Rank"]
        assert set(rank["required"]) <= set(answer[0]) and set(rank["properties"]) <= set(answer[0])
        request = tei["components"]["schemas"]["RerankRequest"]["properties"]
        from bertserve.schemas import RerankRequest

        assert set(request) - {"truncation_direction"} <= set(RerankRequest.model_fields)


def test_evaluate_over_http_ranks_through_rerank(service_client, rerank_files, monkeypatch):
    """`bertserve evaluate URL --task rerank` sends one /rerank request per query."""
    import httpx

    from bertserve.client import ServiceClient
    from bertserve.evaluate import evaluate

    monkeypatch.setattr(ServiceClient, "__init__", lambda self, url, **kw: setattr(self, "http", service_client))
    result = evaluate("http://test", str(rerank_files["test"]), Columns(), task="rerank")
    assert result["metrics"]["queries"] == 20 and result["metrics"]["mrr@10"] > 0.9, result
    assert httpx  # the real client is httpx; the in-process one has its interface


def test_rerank_scores_are_stable_across_batch_mates(published_rerank):
    pipe = offline(published_rerank)
    item = {"query": "the movie", "texts": ["a good day", "sad poor"]}
    alone = pipe.predict([item])[0]["relevance"]
    crowd = pipe.predict([item, {"query": "other", "texts": ["x " * 40] * 30}])[0]["relevance"]
    assert np.allclose(alone, crowd, atol=1e-6)


def test_pairs_and_rerank_through_a_real_bentoml_serve(published_pairs, published_rerank, tmp_path):
    """One `bentoml serve` with the pair cross-encoder and the reranker: /classify pairs, /rerank
    and the refusals answered by the server process as in process."""
    import httpx

    from tests.test_serve_process import start_serve, stop_serve

    url, proc = start_serve(tmp_path, BERTSERVE_MODELS=f"pairs={published_pairs['tag']},rerank={published_rerank['tag']}",
                            BERTSERVE_SHUTDOWN_DRAIN_S="0", BERTSERVE_MAX_RERANK_TEXTS="8",
                            **{f"BERTSERVE_MODEL_{t}": "" for t in ("CLASSIFICATION", "SIMILARITY", "NER", "QA",
                                                                     "RERANK")})
    try:
        pairs = httpx.post(f"{url}/classify", json={"pairs": [["good day", "fine film"]]}, timeout=30)
        assert pairs.status_code == 200 and "value" in pairs.json()["results"][0], pairs.text
        texts = ["sad poor film", "a great good day", "the worst"]
        ranked = httpx.post(f"{url}/rerank", json={"query": "the day", "texts": texts, "return_text": True}, timeout=30)
        assert ranked.status_code == 200, ranked.text
        assert ranked.json()[0]["index"] == 1 and ranked.json()[0]["text"] == texts[1]
        over = httpx.post(f"{url}/rerank", json={"query": "q", "texts": ["a"] * 9}, timeout=30)
        assert over.status_code == 422 and "BERTSERVE_MAX_RERANK_TEXTS" in over.json()["error"]
        both = httpx.post(f"{url}/classify", json={"texts": ["a"], "pairs": [["a", "b"]]}, timeout=30)
        assert both.status_code == 422 and "not both" in both.json()["error"]
    finally:
        stop_serve(proc)
