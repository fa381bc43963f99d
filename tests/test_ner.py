"""Named-entity recognition: data formats, tag schemes, windows, training, export and /ner."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertserve.artifact import ModelCard, read_card
from bertserve.data_ner import load_ner_examples
from bertserve.errors import DataError
from bertserve.runtime import Pipeline, TextEncoder, Windows
from bertserve.store import resolve
from bertserve.tasks import ner
from tests.conftest import FILLER, PEOPLE, PLACES, write_jsonl
from tests.test_service import assert_error

# --- tags and metrics -----------------------------------------------------------------------


def test_tag_schemes_decode_to_the_same_spans():
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "O", "B-ORG"]
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "O", "I-ORG"]
    bioes = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "O", "S-ORG"]
    expected = [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "LOC"), (7, 8, "ORG")]
    for tags in (iob2, iob1, bioes):
        assert ner.spans_from_tags(tags) == expected, tags


def test_entity_scores_match_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-ORG"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 15))] for _ in range(300)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in row] for row in gold]
    ours = ner.entity_prf([ner.spans_from_tags(g) for g in gold], [ner.spans_from_tags(p) for p in pred])
    assert ours["precision"] == pytest.approx(precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(recall_score(gold, pred))
    assert ours["f1"] == pytest.approx(f1_score(gold, pred))
    assert 0.2 < ours["f1"] < 0.9  # neither trivial nor degenerate


# --- data -----------------------------------------------------------------------------------


def test_three_input_formats_read_the_same(tmp_path):
    conll = tmp_path / "a.txt"
    conll.write_text("-DOCSTART- -X- -X- O\n\nU.S. NNP B-NP I-LOC\nofficials NNS I-NP O\nmet X X O\n"
                     "Bob X X I-PER\nSmith X X I-PER\n\nhello X X O\n")
    tokens = write_jsonl(tmp_path / "b.jsonl", [
        {"tokens": ["U.S.", "officials", "met", "Bob", "Smith"], "tags": ["S-LOC", "O", "O", "B-PER", "E-PER"]},
        {"tokens": ["hello"], "tags": ["O"]}])
    spans = write_jsonl(tmp_path / "c.jsonl", [
        {"text": "U.S. officials met Bob Smith", "entities": [{"start": 19, "end": 28, "label": "PER"},
                                                             {"start": 0, "end": 4, "label": "LOC"}]},
        {"text": "hello", "entities": []}])
    expected = [{"text": "U.S. officials met Bob Smith", "entities": [{"start": 0, "end": 4, "label": "LOC"},
                                                                       {"start": 19, "end": 28, "label": "PER"}]},
                {"text": "hello", "entities": []}]
    for path in (conll, tokens, spans):
        assert load_ner_examples(str(path)) == expected, path


@pytest.mark.parametrize("content, fragment", [
    ("EU B-ORG\nrejects\n", "a.txt:2"),
    ('{"tokens": ["a", "b"], "tags": ["O"]}\n', "2 tokens but 1 tags"),
    ('{"text": "abc", "entities": [{"start": 2, "end": 9, "label": "X"}]}\n', "outside the text"),
    ('{"text": "abcd", "entities": [{"start": 0, "end": 3, "label": "X"}, {"start": 2, "end": 4, "label": "Y"}]}\n',
     "overlap"),
    ('{"sentence": "abc"}\n', "expected {'tokens', 'tags'}"),
])
def test_malformed_data_is_reported_with_its_place(tmp_path, content, fragment):
    path = tmp_path / ("a.txt" if "B-ORG" in content else "a.jsonl")
    path.write_text(content)
    with pytest.raises(DataError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        load_ner_examples(str(path))


# --- windows --------------------------------------------------------------------------------


def oracle_outputs(encoder: TextEncoder, examples: list[dict], card: ModelCard) -> list[Windows]:
    """Model outputs that say exactly what training labels say: decoding them must give the gold."""
    label_ids = {name: i for i, name in enumerate(card.labels)}
    out = []
    features = ner.featurize(encoder, [ex["text"] for ex in examples], card)
    for ex, items in zip(examples, features, strict=True):
        rows = []
        for item, labels in zip(items, ner.training_labels(ex["text"], items, ex["entities"], label_ids), strict=True):
            row = np.zeros((item.n_tokens, len(card.labels)))
            for p, label in enumerate(labels):
                if label >= 0:
                    row[p, label] = 10.0
            rows.append(row)
        out.append(Windows(ex["text"], items, rows))
    return out


def test_labels_and_decoding_round_trip_across_windows(tiny_base, ner_files):
    examples = load_ner_examples(str(ner_files["validation"]))
    long_text = " ".join(random.Random(1).choices(FILLER, k=300)) + " bob went to paris"
    examples.append({"text": long_text, "entities": [
        {"start": len(long_text) - 17, "end": len(long_text) - 14, "label": "PER"},
        {"start": len(long_text) - 5, "end": len(long_text), "label": "LOC"}]})
    card = ModelCard(task="ner", labels=ner.bio_labels(["PER", "LOC", "ORG"]), max_length=12)
    encoder = TextEncoder(tiny_base / "tokenizer.json", card.max_length)
    outputs = oracle_outputs(encoder, examples, card)
    assert len(outputs[-1].items) > 30  # the long text really was windowed
    results = ner.postprocess(outputs, card)
    assert ner.score(results, [ex["entities"] for ex in examples], card)["f1"] == 1.0


# --- training, export, service --------------------------------------------------------------


def test_trained_ner_directory(trained_ner):
    card = read_card(trained_ner)
    assert card.task == "ner" and card.primary_metric == "f1"
    assert card.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert {"precision", "recall", "f1", "f1/PER", "f1/ORG"} <= set(card.metrics)
    assert card.metrics["f1"] > 0.9, card.metrics
    assert (trained_ner / "model.safetensors").is_file()


def test_export_gates_on_entity_f1(published_ner):
    card = read_card(Path(published_ner["artifact"]))
    assert card.parity["metric"] == "f1"
    fp32 = card.parity["variants"]["fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_logit_diff"] < 1e-3
    assert card.variant == published_ner["variant"]


def tag(client, texts):
    response = client.post("/ner", json={"texts": texts})
    assert response.status_code == 200, response.text
    return response.json()


def test_ner_answers_whole_entities_like_the_published_pipeline(service_client, published_ner):
    texts = ["yesterday alice went to paris with acme corp", "the team won the game"]
    body = tag(service_client, texts)
    assert body["model"] == published_ner["tag"]
    first = body["results"][0]["entities"]
    assert [(e["entity_group"], e["word"]) for e in first] == [("PER", "alice"), ("LOC", "paris"),
                                                                ("ORG", "acme corp")]
    for e in first:
        assert texts[0][e["start"] : e["end"]] == e["word"] and 0 < e["score"] <= 1
    _, path, card = resolve("ner", published_ner["tag"])
    assert body["results"] == Pipeline.from_artifact(path, card).predict(texts)
    info = service_client.get("/info").json()["models"]["ner"]
    assert info["entity_types"] == ["LOC", "ORG", "PER"]


def test_entity_at_the_end_of_a_5000_word_text(service_client):
    rng = random.Random(2)
    text = " ".join(rng.choice(FILLER) for _ in range(4995)) + ".  Then  carol flew to tokyo"
    entities = tag(service_client, [text])["results"][0]["entities"]
    found = {(e["entity_group"], e["start"], e["end"]) for e in entities}
    assert ("LOC", len(text) - 5, len(text)) in found
    assert ("PER", text.rindex("carol"), text.rindex("carol") + 5) in found


words = st.sampled_from([*FILLER, *PEOPLE, *PLACES, "acme corp", "U.S.", "naïve", "日本", "😀", "\u200b", "שלום",
                         "e\u0301", "ﬁ", "\t", "  ", ",", "'s", "Ⅻ", "\u00a0"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(words, st.text(min_size=1, max_size=8)), min_size=1, max_size=40).map(" ".join))
def test_property_entities_are_exact_non_overlapping_slices(service_client, text):
    response = service_client.post("/ner", json={"texts": [text]})
    if not text.strip():
        assert response.status_code == 400
        return
    assert response.status_code == 200, response.text
    end = 0
    for e in response.json()["results"][0]["entities"]:
        assert 0 <= e["start"] < e["end"] <= len(text)
        assert text[e["start"] : e["end"]] == e["word"]
        assert e["start"] >= end  # in order, never overlapping
        end = e["end"]


@pytest.mark.parametrize("body, status, error_type, fragment", [
    ({"texts": []}, 400, "empty", "at least one"),
    ({"texts": ["  "]}, 400, "empty", "text 0"),
    ({"texts": "one text"}, 422, "validation", "texts"),
    ({"text": ["a"]}, 422, "validation", "texts"),
    ({"texts": ["a"], "truncate": True}, 422, "validation", "truncate"),
    ({"texts": [3]}, 422, "validation", "texts.0"),
])
def test_bad_ner_inputs_get_a_useful_4xx(service_client, body, status, error_type, fragment):
    assert_error(service_client.post("/ner", json=body), status, error_type, fragment)


def test_ner_document_limit(service_client, limits):
    limits(max_chars_per_document=100)
    assert service_client.post("/ner", json={"texts": ["bob " * 25]}).status_code == 200  # 100 characters
    assert_error(service_client.post("/ner", json={"texts": ["bob " * 25 + "x"]}), 422, "validation",
                 "101 characters", "BERTSERVE_MAX_CHARS_PER_DOCUMENT")
    raw = service_client.post("/ner", content=b'{"texts": ["\\ud800 paris"]}',
                              headers={"content-type": "application/json"})
    assert_error(raw, 422, "validation", "lone surrogate")


def test_conll_documents_join_their_sentences(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nBob B-PER\nleft O\n\nParis B-LOC\n\n-DOCSTART- -X- -X- O\n\nhi O\n")
    assert load_ner_examples(str(path), documents=True) == [
        {"text": "Bob left Paris", "entities": [{"start": 0, "end": 3, "label": "PER"},
                                                {"start": 9, "end": 14, "label": "LOC"}]},
        {"text": "hi", "entities": []}]
    assert len(load_ner_examples(str(path))) == 3
