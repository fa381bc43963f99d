"""Sentence similarity and embeddings: a bi-encoder whose ONNX graph ends in mean pooling.

Normalization happens here, in the one post-processing function the parity gate and the
service share; the service can also hand out the raw pooled vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.metrics import pearson, spearman
from bertserve.registry import TaskSpec, register

SCORED, PAIRS = "scored_pairs", "pairs"  # how a similarity model was trained (card.problem_type)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embed(outputs: np.ndarray, normalize: bool = True) -> np.ndarray:
    return l2_normalize(outputs) if normalize else np.asarray(outputs, dtype=np.float32)


def postprocess(outputs: np.ndarray, card: Any) -> list[dict[str, Any]]:
    return [{"embedding": row} for row in embed(outputs)]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[str], list[Any]]:
    """Pairs become 2n texts (all first sentences, then all second ones); gold is the scores."""
    texts = [ex["text_a"] for ex in examples] + [ex["text_b"] for ex in examples]
    return texts, [ex.get("score") for ex in examples]


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    n = len(gold)
    vectors = np.stack([r["embedding"] for r in results])
    a, b = vectors[:n], vectors[n:]
    if all(g is not None for g in gold):
        cos = cosine_rows(a, b)
        gold_arr = np.array([float(g) for g in gold])
        return {"spearman": spearman(gold_arr, cos), "pearson": pearson(gold_arr, cos)}
    # unscored pairs: is each first sentence closest to its own partner among all partners?
    sims = l2_normalize(a) @ l2_normalize(b).T
    return {"recall@1": float(np.mean(sims.argmax(axis=1) == np.arange(n)))}


def primary_metric(card: Any) -> str:
    return "recall@1" if card.problem_type == PAIRS else "spearman"


SPEC = register(
    TaskSpec(
        name="similarity",
        auto_model="AutoModel",
        optimum_task="feature-extraction",
        endpoint="/embed",
        postprocess=postprocess,
        score=score,
        primary_metric=primary_metric,
        split_examples=split_examples,
        output_name="sentence_embedding",
    )
)
