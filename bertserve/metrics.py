"""Metrics in plain numpy, shared by training, export's parity gate and `bertserve evaluate`."""

from __future__ import annotations

import numpy as np


def accuracy(gold: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(gold == pred)) if len(gold) else 0.0


def f1_per_class(gold: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 per class for single-label predictions (class ids)."""
    scores = np.zeros(n_classes)
    for c in range(n_classes):
        tp = np.sum((pred == c) & (gold == c))
        fp = np.sum((pred == c) & (gold != c))
        fn = np.sum((pred != c) & (gold == c))
        scores[c] = _f1(tp, fp, fn)
    return scores


def prf(tp: float, n_pred: float, n_gold: float) -> tuple[float, float, float]:
    """Precision, recall and F1 from true positives, predicted and gold counts (0 where undefined)."""
    precision = float(tp / n_pred) if n_pred else 0.0
    recall = float(tp / n_gold) if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def multilabel_f1(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Micro and macro F1 for binary indicator matrices of shape (n, labels)."""
    gold = gold.astype(bool)
    pred = pred.astype(bool)
    tp = (gold & pred).sum(axis=0)
    fp = (~gold & pred).sum(axis=0)
    fn = (gold & ~pred).sum(axis=0)
    per_label = [_f1(t, p, n) for t, p, n in zip(tp, fp, fn, strict=True)]
    return {
        "micro_f1": _f1(tp.sum(), fp.sum(), fn.sum()),
        "macro_f1": float(np.mean(per_label)) if per_label else 0.0,
    }


def tune_thresholds(gold: np.ndarray, probs: np.ndarray, grid: np.ndarray | None = None,
                    min_positives: int = 20) -> np.ndarray:
    """Decision thresholds tuned on validation data.

    First one threshold for all labels, the one that maximises micro-F1. Then, for each label
    with at least `min_positives` positive validation examples, the threshold that maximises
    that label's F1. Rarer labels keep the shared one: a per-label threshold fitted to a dozen
    examples fits their noise (measured on GoEmotions: micro-F1 fell below the flat 0.5's).
    """
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3) if grid is None else grid
    gold = gold.astype(bool)

    def f1(pred: np.ndarray, truth: np.ndarray) -> float:
        return _f1(np.sum(pred & truth), np.sum(pred & ~truth), np.sum(~pred & truth))

    shared = max(grid, key=lambda t: f1(probs >= t, gold))
    thresholds = np.full(gold.shape[1], float(shared))
    for j in range(gold.shape[1]):
        if gold[:, j].sum() < min_positives:
            continue
        best, best_f1 = float(shared), f1(probs[:, j] >= shared, gold[:, j])
        for t in grid:
            score = f1(probs[:, j] >= t, gold[:, j])
            if score > best_f1 + 1e-12:
                best, best_f1 = float(t), score
        thresholds[j] = best
    return thresholds


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(_rank(np.asarray(a, float)), _rank(np.asarray(b, float)))


def regression_metrics(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    gold = np.asarray(gold, float)
    pred = np.asarray(pred, float)
    return {
        "pearson": pearson(gold, pred),
        "spearman": spearman(gold, pred),
        "mse": float(np.mean((gold - pred) ** 2)) if len(gold) else 0.0,
    }


def ranking_metrics(scores: list[list[float]], relevant: list[list[bool]], k: int = 10) -> dict[str, float]:
    """MRR@k, Recall@1 and Recall@5 over queries, each with its candidates' scores and relevance.
    Ties go to the earlier candidate (as /rerank sorts). Queries with no relevant candidate cannot be
    ranked right or wrong and are left out (counted in `queries_without_relevant`)."""
    rr, r1, r5 = [], [], []
    skipped = 0
    for s, rel in zip(scores, relevant, strict=True):
        n_rel = sum(rel)
        if not n_rel:
            skipped += 1
            continue
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        first = next(rank for rank, i in enumerate(order, 1) if rel[i])
        rr.append(1.0 / first if first <= k else 0.0)
        r1.append(sum(rel[i] for i in order[:1]) / n_rel)
        r5.append(sum(rel[i] for i in order[:5]) / n_rel)
    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else 0.0

    return {f"mrr@{k}": mean(rr), "recall@1": mean(r1), "recall@5": mean(r5), "queries": float(len(rr)),
            "queries_without_relevant": float(skipped)}
