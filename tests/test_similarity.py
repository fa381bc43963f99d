"""Sentence similarity and embeddings: training, export with pooling, /embed, /similarity, /v1/embeddings."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from bertserve.artifact import read_card
from bertserve.data import Columns, load_pairs
from bertserve.errors import DataError
from bertserve.runtime import Pipeline
from bertserve.store import resolve
from tests.conftest import tiny_config, write_jsonl
from tests.test_service import assert_error


def test_trained_bi_encoder_directory(trained_similarity):
    card = read_card(trained_similarity)
    assert card.task == "similarity" and card.problem_type == "scored_pairs"
    assert {"spearman", "pearson"} <= set(card.metrics)
    assert card.training["fine_tuned"] is True
    modules = json.loads((trained_similarity / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"], \
        "normalization is left to the shared post-processing"
    assert (trained_similarity / "model.safetensors").is_file()


def test_export_gate_compares_embeddings(published_similarity):
    card = read_card(Path(published_similarity["artifact"]))
    variants = card.parity["variants"]
    assert card.parity["metric"] == "spearman"
    assert variants["fp32"]["min_cosine"] > 0.999
    assert variants["int8"]["mean_cosine"] > 0.9
    assert card.variant == published_similarity["variant"]


def embed(client, texts, **options):
    response = client.post("/embed", json={"texts": texts, **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_embed_is_normalized_and_matches_the_published_pipeline(service_client, published_similarity):
    texts = ["great film and plot", "the team won the game", "a"]
    body = embed(service_client, texts)
    vectors = np.array(body["embeddings"])
    assert body["model"] == published_similarity["tag"] and body["dimensions"] == 32
    assert vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    _, path, card = resolve("similarity", published_similarity["tag"])
    expected = np.stack([r["embedding"] for r in Pipeline.from_artifact(path, card).predict(texts)])
    assert np.allclose(vectors, expected, atol=1e-5)
    raw = np.array(embed(service_client, texts, normalize=False)["embeddings"])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), vectors, atol=1e-5)


def test_similarity_scores_are_cosines_of_embed(service_client):
    sentences = ["great film and plot", "the team won the game", "sad day"]
    response = service_client.post("/similarity", json={"source_sentence": "great film", "sentences": sentences})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    vectors = np.array(embed(service_client, [*sentences, "great film"])["embeddings"])
    assert np.allclose(scores, vectors[:3] @ vectors[3], atol=1e-5)
    same = service_client.post("/similarity", json={"source_sentence": "sad day", "sentences": ["sad day"]})
    assert same.json()["scores"][0] == pytest.approx(1.0, abs=1e-5)


def test_openai_embeddings_shape(service_client, published_similarity):
    # what an OpenAI client sends: a model name (here the served one's), and base64 unless told otherwise
    unknown = {"input": ["great film"], "model": "text-embedding-3-small", "encoding_format": "base64"}
    refused = service_client.post("/v1/embeddings", json=unknown)
    assert refused.status_code == 404 and "similarity" in refused.json()["error"], refused.text
    request = {"input": ["great film", "sad day"], "model": "similarity", "encoding_format": "base64"}
    response = service_client.post("/v1/embeddings", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == published_similarity["tag"]
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "embedding" for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    floats = service_client.post("/v1/embeddings", json={"input": ["great film", "sad day"]}).json()
    assert np.allclose(decoded, np.array([d["embedding"] for d in floats["data"]]), atol=1e-6)
    single = service_client.post("/v1/embeddings", json={"input": "great film"}).json()
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 32


@pytest.mark.parametrize(
    ("route", "body", "status", "fragment"),
    [
        ("/embed", {"texts": []}, 400, "texts is empty"),
        ("/embed", {"texts": ["ok", ""]}, 400, "text 1 is empty"),
        ("/embed", {"texts": ["ok"], "normalize": "yes please"}, 422, "normalize"),
        ("/similarity", {"source_sentence": "", "sentences": ["ok"]}, 400, "source_sentence 0 is empty"),
        ("/similarity", {"source_sentence": "ok", "sentences": []}, 400, "sentences is empty"),
        ("/similarity", {"sentences": ["ok"]}, 422, "source_sentence: Field required"),
        ("/v1/embeddings", {"input": []}, 400, "input is empty"),
        ("/v1/embeddings", {"input": [[1, 2, 3]]}, 422, "input"),
        ("/v1/embeddings", {"input": "ok", "dimensions": 8}, 422, "dimensions=8"),
        ("/v1/embeddings", {"input": "ok", "encoding_format": "int8"}, 422, "encoding_format"),
    ],
)
def test_bad_inputs_get_4xx(service_client, route, body, status, fragment):
    assert_error(service_client.post(route, json=body), status, "empty" if status == 400 else "validation", fragment)


def test_too_many_sentences(service_client, service_instance):
    limit = service_instance.settings.max_texts_per_request
    ok = service_client.post("/similarity", json={"source_sentence": "a", "sentences": ["b"] * limit})
    assert ok.status_code == 200
    too_many = service_client.post("/similarity", json={"source_sentence": "a", "sentences": ["b"] * (limit + 1)})
    assert_error(too_many, 422, "validation", f"{limit + 1} sentences in one request")


def test_many_single_requests_batch_to_the_same_vectors(service_client):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"the {w} game" for w in ("great", "sad", "team", "law", "gene", "atom")] * 3
    with ThreadPoolExecutor(6) as pool:
        singles = list(pool.map(lambda t: embed(service_client, [t])["embeddings"][0], texts))
    together = embed(service_client, texts)["embeddings"]
    # int8 quantizes activations with a scale per batch: batch-mates move vectors by ~1e-4
    assert np.allclose(singles, together, atol=2e-3)
    assert np.min(np.sum(np.array(singles) * np.array(together), axis=1)) > 0.9999


def test_pairs_and_triplets_train_with_ranking_loss(tmp_path, tiny_base):
    rows = [{"anchor": f"{w} game", "positive": f"the {w} team", "negative": "sad law"}
            for w in ("great", "good", "bad", "awful", "fine", "poor", "happy", "worst") * 6]
    train = write_jsonl(tmp_path / "triplets.jsonl", rows)
    from training import run_training

    card = run_training(tiny_config(tiny_base, train, tmp_path / "mnrl", task="similarity", epochs=1))
    assert card.problem_type == "pairs" and "recall@1" in card.metrics


def test_pair_layouts(tmp_path):
    glue = tmp_path / "train.tsv"
    glue.write_text('index\tgenre\tsentence1\tsentence2\tscore\n0\tnews\tA "quoted" man.\tA man.\t4.2\n')
    assert load_pairs(str(glue), Columns()) == [{"text_a": 'A "quoted" man.', "text_b": "A man.", "score": 4.2}]
    original = tmp_path / "sts-test.tsv"
    original.write_text("main-news\tfile\t2012\t1\t2.5\tOne sentence.\tAnother one.\textra\n")
    cols = Columns(text="5", text_pair="6", label="4")
    assert load_pairs(str(original), cols) == [{"text_a": "One sentence.", "text_b": "Another one.", "score": 2.5}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_a": "x", "text_b": "y", "score": "high"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: the score 'high' is not a number"):
        load_pairs(str(bad), Columns())
