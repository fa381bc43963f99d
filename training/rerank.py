"""Training a reranker: a pair classification head (`training.classification`) on (query, passage,
label) rows, validated and checkpointed on MRR@10 over the validation pairs grouped by query."""

from __future__ import annotations

from typing import Any

import numpy as np

from bertserve.artifact import ModelCard
from bertserve.errors import DataError
from bertserve.tasks.classification import MULTI
from bertserve.tasks.rerank import SPEC, columns_for, relevance, split_examples
from training import classification
from training.config import TrainConfig


def check(problem_type: str, labels: list[str], train: list[dict[str, Any]], val: list[dict[str, Any]]) -> None:
    """A reranker scores relevance: pairs, and two classes or one number per pair."""
    if "text_pair" not in train[0]:
        raise DataError("reranking trains on (query, passage, label) rows: name the passage column with "
                        "--text-pair-column (JSONL: `query`, `passage`, `label` fields)")
    if problem_type == MULTI or (problem_type != "regression" and len(labels) != 2):
        raise DataError(f"a reranker learns relevant vs not relevant: the labels must be two classes (0/1) or "
                        f"numbers (graded relevance, --problem-type regression); found {labels[:6]}")
    if len(split_examples(val)[0]) == len(val):
        raise DataError("every validation query has one passage: MRR@10 ranks a query's passages against each "
                        "other, so give each query several (its relevant passage and others)")


def ranking(val: list[dict[str, Any]], logits: np.ndarray, card: ModelCard) -> dict[str, float]:
    """MRR@10 and Recall@k of the validation pairs grouped by query, in the service's own scoring
    (`relevance`, `score`): validation examples and logits are in the same order."""
    scores, _ = relevance(logits, card)
    groups: dict[str, tuple[list[float], list[Any]]] = {}
    for ex, s in zip(val, scores, strict=True):
        g = groups.setdefault(ex["text"], ([], []))
        g[0].append(float(s))
        g[1].append(ex["label"])
    return SPEC.score([{"relevance": s} for s, _ in groups.values()], [labels for _, labels in groups.values()], card)


def train(cfg: TrainConfig) -> ModelCard:
    return classification.train(cfg, columns=lambda source: columns_for(source, cfg.columns), check=check,
                                extra_metrics=ranking, group=lambda ex: ex["text"], small_data=False)


def baseline(model_dir: Any, card: ModelCard, batch_size: int) -> Any:
    """The bench's baseline: transformers' text-classification pipeline on every (query, text) pair."""
    run = classification.baseline(model_dir, card, batch_size)
    return lambda inputs: run([(x["query"], t) for x in inputs for t in x["texts"]])
