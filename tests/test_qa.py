"""Extractive QA: data formats, the SQuAD metric, windows, null threshold, training, export, /qa."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bertserve.artifact import ModelCard, read_card
from bertserve.data_qa import load_qa_examples
from bertserve.errors import DataError
from bertserve.runtime import Pipeline, TextEncoder, Windows
from bertserve.store import resolve
from bertserve.tasks import qa
from tests.conftest import FILLER, qa_rows, write_jsonl
from tests.test_service import assert_error
from training.qa import answer_positions, tune_null_threshold

CONTEXT = "The Eiffel Tower is in Paris. It was finished in 1889."


def test_squad_json_and_jsonl_read_the_same(tmp_path):
    squad = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "a", "question": " When was it finished?", "answers": [{"text": "1889", "answer_start": 49}]},
        {"id": "b", "question": "Who built it?", "answers": [], "is_impossible": True}]}]}]}
    (tmp_path / "s.json").write_text(json.dumps(squad))
    write_jsonl(tmp_path / "s.jsonl", [
        {"id": "a", "question": "When was it finished?", "context": CONTEXT,
         "answers": {"text": ["1889"], "answer_start": [49]}},
        {"id": "b", "question": "Who built it?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}}])
    expected = [{"id": "a", "question": "When was it finished?", "context": CONTEXT,
                 "answers": [{"text": "1889", "start": 49}]},
                {"id": "b", "question": "Who built it?", "context": CONTEXT, "answers": []}]
    assert load_qa_examples(str(tmp_path / "s.json")) == expected
    assert load_qa_examples(str(tmp_path / "s.jsonl")) == expected


def test_misplaced_answer_is_reported_with_its_question(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q?", "context": CONTEXT,
                                          "answers": {"text": ["1889"], "answer_start": [3]}}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer '1889' is not the context's text at offset 3"):
        load_qa_examples(str(tmp_path / "bad.jsonl"))


def test_squad_metric_normalizes_and_takes_the_best_reference():
    scores = qa.squad_scores(["The Eiffel Tower!", "in Paris", "", "1889"],
                             [["eiffel tower"], ["Paris, France", "Paris"], [], ["1890"]])
    # EM: 1 + 0 + 1 (both empty) + 0; F1: 1 + 2/3 ("in paris" vs "paris") + 1 + 0
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)


def test_squad_v2_scores_answerable_and_unanswerable_apart_with_counts():
    predictions = ["Paris", "in 1889", "", "Lyon", "", "The"]
    gold = [["Paris"], ["1889"], ["Rome"], [], [], ["the"]]  # "the" normalizes to nothing: unanswerable
    scores = qa.squad_scores(predictions, gold)
    # answerable: EM 1 + 0 + 0, F1 1 + 2/3 + 0; unanswerable: right when the prediction normalizes to "" (2 of 3)
    assert scores["has_ans_total"] == 3 and scores["no_ans_total"] == 3 and scores["total"] == 6
    assert scores["has_ans_exact_match"] == pytest.approx(100 / 3)
    assert scores["has_ans_f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert scores["no_ans_exact_match"] == scores["no_ans_f1"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx((scores["has_ans_f1"] * 3 + scores["no_ans_f1"] * 3) / 6)
    assert scores["exact_match"] == pytest.approx(100 * 3 / 6)
    # answerable-only data keeps the two v1.1 figures, unless the model was trained with unanswerable ones
    assert set(qa.squad_scores(["Paris"], [["Paris"]])) == {"exact_match", "f1"}
    card = ModelCard(task="qa", problem_type=qa.WITH_UNANSWERABLE)
    assert qa.score([{"answer": "Paris"}], [["Paris"]], card)["no_ans_total"] == 0


def test_the_report_splits_answerable_from_unanswerable_questions():
    card = ModelCard(task="qa", problem_type=qa.WITH_UNANSWERABLE)
    inputs = [{"question": "q", "context": "Paris is big"}] * 3
    results = [{"answer": "Paris", "no_answer": False}, {"answer": "", "no_answer": True},
               {"answer": "big", "no_answer": False}]
    table = qa.report(card, inputs, [["Paris"], [], []], results).blocks[0]
    assert table.rows == [["answerable", 1, 100.0, 100.0], ["unanswerable", 2, 50.0, 50.0],
                          ["all", 3, pytest.approx(66.67), pytest.approx(66.67)]]
    plain = qa.report(ModelCard(task="qa"), inputs[:1], [["Paris"]], [{"answer": "Paris"}]).blocks[0]
    assert "unanswerable" not in plain.title  # a model without unanswerable questions keeps its page


def test_the_gate_counts_changed_no_answer_decisions():
    span = {"answer": "abc", "start": 0, "end": 3, "score": 0.9, "no_answer": False}
    none = {"answer": "", "start": 0, "end": 0, "score": 0.4, "no_answer": True}
    assert qa.no_answer_changes([span, none, none], [span, span, none]) == {"no_answer_changes": 1}
    v1 = {k: v for k, v in span.items() if k != "no_answer"}
    assert qa.no_answer_changes([v1], [v1]) == {}  # a model without a no-answer decision


def oracle(encoder: TextEncoder, examples: list[dict], card: ModelCard) -> list[Windows]:
    """Logits that say exactly what the training labels say."""
    items = [{"question": ex["question"], "context": ex["context"]} for ex in examples]
    out = []
    for ex, item, group in zip(examples, items, qa.featurize(encoder, items, card), strict=True):
        rows = []
        for window in group:
            start, end = answer_positions(window, ex["answers"][0] if ex["answers"] else None)
            row = np.zeros((window.n_tokens, 2))
            row[start, 0] = row[end, 1] = 10.0
            rows.append(row)
        out.append(Windows(item, group, rows))
    return out


def test_answer_labels_and_decoding_round_trip_across_windows(tiny_base, qa_files):
    examples = load_qa_examples(str(qa_files["validation"]))
    card = ModelCard(task="qa", max_length=24)
    encoder = TextEncoder(tiny_base / "tokenizer.json", card.max_length)
    outputs = oracle(encoder, examples, card)
    assert max(len(w.items) for w in outputs) > 5  # long contexts really were windowed
    results = qa.postprocess(outputs, card)
    for r, w in zip(results, outputs, strict=True):
        assert w.source["context"][r["start"] : r["end"]] == r["answer"]
    assert qa.score(results, [[a["text"] for a in ex["answers"]] for ex in examples], card)["exact_match"] == 100.0


def test_null_threshold_is_tuned_and_applied():
    def windows(answer_logit: float, null_logit: float) -> Windows:
        item = SimpleNamespace(encoding=SimpleNamespace(sequence_ids=[None, 0, None, 1, 1, None],
                                                        offsets=[(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (0, 0)]))
        row = np.full((6, 2), -5.0)
        row[0] = null_logit
        row[3, 0] = row[3, 1] = answer_logit
        return Windows({"question": "q", "context": "abc def"}, [item], [row])

    outputs = [windows(4, 0), windows(3, 1), windows(1, 2), windows(0, 4)]  # margins null - span: -8 -4 2 8
    gold = [["abc"], ["abc"], [], []]
    threshold = tune_null_threshold(outputs, gold)
    assert -4 < threshold < 2
    card = ModelCard(task="qa", problem_type=qa.WITH_UNANSWERABLE, thresholds={qa.NO_ANSWER: threshold})
    results = qa.postprocess(outputs, card)
    assert [r["no_answer"] for r in results] == [False, False, True, True]
    assert results[0]["answer"] == "abc" and results[2]["answer"] == ""


def test_trained_qa_directory(trained_qa):
    card = read_card(trained_qa)
    assert card.task == "qa" and card.primary_metric == "f1" and card.problem_type == "answerable_only"
    assert set(card.metrics) >= {"exact_match", "f1"}
    assert card.metrics["f1"] > 80, card.metrics  # 0-100 scale
    assert (trained_qa / "model.safetensors").is_file()


def test_export_gates_on_squad_f1(published_qa):
    card = read_card(Path(published_qa["artifact"]))
    assert card.parity["metric"] == "f1"
    fp32 = card.parity["variants"]["fp32"]
    assert fp32["metric_drop_points"] == pytest.approx(0, abs=1e-6) and fp32["max_abs_logit_diff"] < 1e-3


def ask(client, items):
    response = client.post("/qa", json={"items": items})
    assert response.status_code == 200, response.text
    return response.json()


def test_qa_answers_like_the_published_pipeline(service_client, published_qa):
    items = [{"question": r["question"], "context": r["context"]} for r in qa_rows(4, seed=11)]
    body = ask(service_client, items)
    assert body["model"] == published_qa["tag"]
    for item, result, row in zip(items, body["results"], qa_rows(4, seed=11), strict=True):
        assert item["context"][result["start"] : result["end"]] == result["answer"]
        assert result["answer"] == row["answers"]["text"][0]
        assert "no_answer" not in result  # trained without unanswerable questions
    _, path, card = resolve("qa", published_qa["tag"])
    assert body["results"] == Pipeline.from_artifact(path, card).predict(items)


def test_answer_at_the_end_of_a_20000_character_context(service_client):
    rng = random.Random(3)
    filler = ""
    while len(filler) < 20_000:
        filler += rng.choice(FILLER) + " "
    context = filler + "then dave went to berlin"
    result = ask(service_client, [{"question": "where did dave go", "context": context}])["results"][0]
    assert (result["answer"], result["start"], result["end"]) == ("berlin", len(context) - 6, len(context))


text = st.text(min_size=1, max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(question="0", context="\x1b")  # a context the tokenizer reduces to nothing: empty answer, not a 500
@given(question=text, context=st.lists(st.one_of(text, st.sampled_from(FILLER)), min_size=1, max_size=60)
       .map(" ".join))
def test_property_answer_is_a_slice_of_the_context(service_client, question, context):
    response = service_client.post("/qa", json={"items": [{"question": question, "context": context}]})
    if not question.strip() or not context.strip():
        assert response.status_code == 400
        return
    if response.status_code == 422:  # only for a question over the model's question budget
        assert "tokens" in response.json()["error"]
        return
    assert response.status_code == 200, response.text
    r = response.json()["results"][0]
    assert 0 <= r["start"] <= r["end"] <= len(context)
    assert context[r["start"] : r["end"]] == r["answer"]


@pytest.mark.parametrize("body, status, error_type, fragment", [
    ({"items": []}, 400, "empty", "at least one question"),
    ({"items": [{"question": " ", "context": "bob went to paris"}]}, 400, "empty", "question 0"),
    ({"items": [{"question": "where", "context": ""}]}, 400, "empty", "context 0"),
    ({"items": [{"question": "where"}]}, 422, "validation", "items.0.context"),
    ({"items": [{"context": "x"}]}, 422, "validation", "items.0.question"),
    ({"question": "where", "context": "x"}, 422, "validation", "items"),
    ({"items": [{"question": "where " * 40, "context": "bob went to paris"}]}, 422, "validation",
     "at most"),
])
def test_bad_qa_inputs_get_a_useful_4xx(service_client, body, status, error_type, fragment):
    assert_error(service_client.post("/qa", json=body), status, error_type, fragment)


def test_qa_context_limit(service_client, limits):
    limits(max_chars_per_document=100)
    context = ("bob went to paris " * 6)[:100]
    assert service_client.post("/qa", json={"items": [{"question": "where", "context": context}]}).status_code == 200
    assert_error(service_client.post("/qa", json={"items": [{"question": "where", "context": context + "x"}]}),
                 422, "validation", "context 0 has 101 characters", "BERTSERVE_MAX_CHARS_PER_DOCUMENT")


# --- unanswerable questions (SQuAD 2.0 style), end to end through a real `bentoml serve` --------


def squad_with_filler_article(rows: list[dict], seed: int) -> dict:
    """SQuAD v1.1 JSON of two articles: the questions' own ("X went to PLACE" somewhere in filler)
    and one of filler paragraphs without questions, the only other article, so every question the
    converter moves lands where nobody went anywhere: it really has no answer there."""
    rng = random.Random(seed)
    own = [{"context": row["context"], "qas": [{"id": row["id"], "question": row["question"], "answers": [
        {"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"],
                                                       strict=True)]}]} for row in rows]
    filler = [{"context": " ".join(rng.choices(FILLER, k=rng.randint(4, 12))), "qas": []} for _ in range(20)]
    return {"version": "1.1", "data": [{"title": "travel", "paragraphs": own},
                                       {"title": "filler", "paragraphs": filler}]}


def test_unanswerable_questions_are_tuned_gated_and_served_as_no_answer(tiny_base, tmp_path_factory, tmp_path):
    """A model trained on `bertserve data squad2` output stores its tuned null threshold, the gate
    measures HasAns / NoAns F1 and changed no-answer decisions with it, and a real `bentoml serve`
    answers `no_answer: true` where the context cannot answer, the span where it can; `bertserve
    evaluate` through the service reports the v2 breakdown the gate measured."""
    from bertserve.data import Columns
    from bertserve.evaluate import evaluate
    from bertserve.registry import tasks
    from bertserve_cli import main
    from tests.conftest import export_tiny, tiny_config
    from tests.test_serve_process import start_serve, stop_serve
    from training import run_training

    directory = tmp_path_factory.mktemp("squad2")
    files = {}
    for name, n, seed in (("train", 600, 21), ("validation", 90, 22)):
        v1 = directory / f"{name}-v1.json"
        v1.write_text(json.dumps(squad_with_filler_article(qa_rows(n, seed, min_words=2, max_words=8), seed)))
        files[name] = directory / f"{name}.json"
        assert main(["data", "squad2", "--squad", str(v1), "--output", str(files[name]), "--seed", str(seed)]) == 0
    run_training(tiny_config(tiny_base, files["train"], directory / "model", task="qa", max_length=32, epochs=12,
                             validation=str(files["validation"])))
    card = read_card(directory / "model")
    assert card.problem_type == qa.WITH_UNANSWERABLE and set(card.thresholds) == {qa.NO_ANSWER}
    assert card.metrics["no_ans_f1"] >= 80 and card.metrics["has_ans_f1"] >= 80, card.metrics

    published = export_tiny(directory / "model", tmp_path_factory, "tiny-squad2")
    exported = read_card(Path(published["artifact"]))
    assert exported.thresholds == card.thresholds  # the tuned threshold travels with the artifact
    examples = load_qa_examples(str(files["validation"]))
    unanswerable = [ex for ex in examples if not ex["answers"]]
    answerable = [ex for ex in examples if ex["answers"]]
    assert len(unanswerable) == round(0.33 * 90)
    gated = exported.parity["variants"][published["variant"]]
    assert gated["passed"] and gated["metrics"]["no_ans_total"] == len(unanswerable), gated
    assert gated["metrics"]["has_ans_total"] == len(answerable)
    assert gated["no_answer_changes"] <= 2, gated  # the threshold decides alike in PyTorch and int8

    no_task_defaults = {f"BERTSERVE_MODEL_{t.upper()}": "" for t in tasks()}
    url, proc = start_serve(tmp_path, **{**no_task_defaults, "BERTSERVE_MODEL_QA": published["tag"]},
                            BERTSERVE_SHUTDOWN_DRAIN_S="0")
    try:
        import httpx

        asked = answerable[: len(unanswerable)]  # one request (at most 64 items)
        items = [{"question": ex["question"], "context": ex["context"]} for ex in unanswerable + asked]
        response = httpx.post(f"{url}/qa", json={"items": items}, timeout=60)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        refused = [r for r in results[: len(unanswerable)] if r["no_answer"]]
        assert all(r["answer"] == "" for r in refused)
        assert len(refused) >= 0.8 * len(unanswerable), results[: len(unanswerable)]
        right = [r for r, ex in zip(results[len(unanswerable) :], asked, strict=True)
                 if not r["no_answer"] and r["answer"] == ex["answers"][0]["text"]]
        assert len(right) >= 0.8 * len(asked), results[len(unanswerable) :]

        served = evaluate(url, str(files["validation"]), Columns(), task="qa")
        for key in ("f1", "has_ans_f1", "no_ans_f1", "no_ans_total", "has_ans_total"):
            assert served["metrics"][key] == pytest.approx(gated["metrics"][key], abs=1e-6), (key, served, gated)
        info = httpx.get(f"{url}/info", timeout=10).json()["models"]["qa"]["card"]
        assert info["thresholds"] == card.thresholds and info["problem_type"] == qa.WITH_UNANSWERABLE
    finally:
        stop_serve(proc)
