"""Text classification: single-label, multi-label and regression heads.

`postprocess` is the one function that turns logits into what `/classify` answers; export's
parity gate scores exactly these results, so parity is a statement about what users get.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertserve.errors import DataError
from bertserve.metrics import accuracy, f1_per_class, multilabel_f1, regression_metrics
from bertserve.registry import TaskSpec, register

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)
# transformers' names for the same three heads (config.problem_type)
HF_PROBLEM_TYPE = {
    SINGLE: "single_label_classification",
    MULTI: "multi_label_classification",
    REGRESSION: "regression",
}


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def thresholds_of(card: Any) -> np.ndarray:
    given = card.thresholds or {}
    return np.array([given.get(label, 0.5) for label in card.labels], dtype=np.float64)


def postprocess(logits: np.ndarray, card: Any) -> list[dict[str, Any]]:
    logits = np.asarray(logits, dtype=np.float64)
    if card.problem_type == REGRESSION:
        return [{"value": float(row[0])} for row in logits]
    labels = card.labels
    if card.problem_type == MULTI:
        probs = sigmoid(logits)
        keep = probs >= thresholds_of(card)
        return [
            {
                "labels": [labels[j] for j in np.flatnonzero(k)],
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
            }
            for row, k in zip(probs, keep, strict=True)
        ]
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    return [
        {
            "label": labels[b],
            "score": float(row[b]),
            "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
        }
        for row, b in zip(probs, best, strict=True)
    ]


def _index(labels: Sequence[str], value: Any) -> int:
    try:
        return labels.index(str(value))
    except ValueError:
        raise DataError(f"label {value!r} is not one the model knows ({', '.join(labels[:10])})") from None


def score(results: Sequence[dict[str, Any]], gold: Sequence[Any], card: Any) -> dict[str, float]:
    if card.problem_type == REGRESSION:
        return regression_metrics(np.array([float(g) for g in gold]), np.array([r["value"] for r in results]))
    labels = list(card.labels)
    if card.problem_type == MULTI:
        g = np.zeros((len(gold), len(labels)), dtype=bool)
        p = np.zeros_like(g)
        for i, (gl, r) in enumerate(zip(gold, results, strict=True)):
            g[i, [_index(labels, x) for x in gl]] = True
            p[i, [_index(labels, x) for x in r["labels"]]] = True
        return multilabel_f1(g, p)
    g = np.array([_index(labels, x) for x in gold])
    p = np.array([_index(labels, r["label"]) for r in results])
    per_class = f1_per_class(g, p, len(labels))
    out = {"accuracy": accuracy(g, p), "macro_f1": float(per_class.mean())}
    out.update({f"f1/{label}": float(f) for label, f in zip(labels, per_class, strict=True)})
    return out


def primary_metric(card: Any) -> str:
    return {SINGLE: "macro_f1", MULTI: "micro_f1", REGRESSION: "spearman"}[card.problem_type]


def split_examples(examples: Sequence[dict[str, Any]]) -> tuple[list[str], list[Any]]:
    return [ex["text"] for ex in examples], [ex["label"] for ex in examples]


SPEC = register(
    TaskSpec(
        name="classification",
        auto_model="AutoModelForSequenceClassification",
        optimum_task="text-classification",
        endpoint="/classify",
        postprocess=postprocess,
        score=score,
        primary_metric=primary_metric,
        split_examples=split_examples,
    )
)
