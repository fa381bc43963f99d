"""Shared fixtures: a tiny random BERT (no network), trained and exported once per session."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

# Before anything imports bentoml: a private model store, and never the hub.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bertserve-test-bentoml-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

POSITIVE = ["good", "great", "excellent", "love", "wonderful", "superb", "fine", "happy"]
NEGATIVE = ["bad", "awful", "terrible", "hate", "boring", "poor", "sad", "worst"]
TOPICS = ["sports", "politics", "science"]
FILLER = ["the", "a", "movie", "book", "film", "was", "is", "it", "this", "very", "really", "plot", "acting",
          "story", "and", "but", "of", "to", "in", "on", "with", "for", "at", "by", "one", "two", "time", "day",
          "game", "team", "vote", "party", "lab", "atom", "cell", "goal", "law", "gene"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with a word-level vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted(set(POSITIVE + NEGATIVE + TOPICS + FILLER) - set(letters))
    vocab = SPECIAL + words + list(letters) + [f"##{c}" for c in letters]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("sentiment")
    return {
        "train": write_jsonl(directory / "train.jsonl", sentiment_rows(240, seed=1)),
        "validation": write_jsonl(directory / "validation.jsonl", sentiment_rows(60, seed=2)),
        "test": write_jsonl(directory / "test.jsonl", sentiment_rows(60, seed=3)),
    }


def tiny_config(tiny_base: Path, train: Path, output: Path, **overrides):
    from training.config import TrainConfig

    options = dict(task="classification", train=str(train), output=str(output), base_model=str(tiny_base),
                   learning_rate=1e-3, epochs=15, batch_size=16, max_length=32, evals_per_epoch=1,
                   early_stopping_patience=10)
    options.update(overrides)
    return TrainConfig(**options)


@pytest.fixture(scope="session")
def trained_single(tiny_base, sentiment_files, tmp_path_factory) -> Path:
    from training import run_training

    output = tmp_path_factory.mktemp("trained") / "sentiment"
    run_training(tiny_config(tiny_base, sentiment_files["train"], output,
                             validation=str(sentiment_files["validation"])))
    return output


@pytest.fixture(scope="session")
def published_single(trained_single, tmp_path_factory) -> dict:
    from export.pipeline import export_model

    output = tmp_path_factory.mktemp("exported") / "sentiment"
    return export_model(str(trained_single), name="tiny-sentiment", output=str(output))


def pair_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs scored 0-5 by word overlap: learnable by a bag-of-words encoder."""
    rng = random.Random(seed)
    vocab = sorted(set(FILLER + POSITIVE + NEGATIVE + TOPICS))
    rows = []
    for _ in range(n):
        a = rng.sample(vocab, 5)
        keep = rng.randint(0, 5)
        b = a[:keep] + rng.sample([w for w in vocab if w not in a], 5 - keep)
        rng.shuffle(b)
        rows.append({"text_a": " ".join(a), "text_b": " ".join(b), "score": float(keep)})
    return rows


@pytest.fixture(scope="session")
def trained_similarity(tiny_base, tmp_path_factory) -> Path:
    from training import run_training

    directory = tmp_path_factory.mktemp("pairs")
    train = write_jsonl(directory / "train.jsonl", pair_rows(240, seed=4))
    validation = write_jsonl(directory / "validation.jsonl", pair_rows(60, seed=5))
    output = tmp_path_factory.mktemp("trained-sim") / "pairs"
    run_training(tiny_config(tiny_base, train, output, task="similarity", validation=str(validation), epochs=4))
    return output


@pytest.fixture(scope="session")
def published_similarity(trained_similarity, tmp_path_factory) -> dict:
    from export.pipeline import export_model

    output = tmp_path_factory.mktemp("exported-sim") / "pairs"
    return export_model(str(trained_similarity), name="tiny-pairs", output=str(output))


@pytest.fixture(scope="session")
def service_client(published_single, published_similarity):
    """The real BentoML service, in process, over HTTP (ASGI), serving the published tiny models."""
    from starlette.testclient import TestClient

    from service import BertServe

    # pin the tags: other tests publish more models (the demo ones) while this client lives
    os.environ["BERTSERVE_MODEL_CLASSIFICATION"] = published_single["tag"]
    os.environ["BERTSERVE_MODEL_SIMILARITY"] = published_similarity["tag"]
    with TestClient(BertServe.to_asgi(), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture()
def service_instance(service_client):
    from _bentoml_sdk.service import get_current_service

    return get_current_service()
