from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bertserve.metrics import (
    f1_per_class,
    multilabel_f1,
    regression_metrics,
    spearman,
    tune_thresholds,
)


def test_f1_per_class_matches_hand_count():
    gold = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5 ; class 1: tp2 fp1 fn1 -> 4/6
    assert f1_per_class(gold, pred, 2) == pytest.approx([0.5, 2 / 3])


def test_multilabel_micro_macro():
    gold = np.array([[1, 0], [1, 1], [0, 1]])
    pred = np.array([[1, 0], [0, 1], [0, 0]])
    out = multilabel_f1(gold, pred)
    assert out["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_with_ties_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 50).astype(float)
    b = a + rng.normal(0, 2, 50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert regression_metrics(a, b)["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic)


def test_tuned_thresholds_beat_flat_half_on_skewed_scores():
    rng = np.random.default_rng(0)
    gold = rng.random((400, 3)) < 0.2
    probs = np.clip(gold * 0.35 + rng.random((400, 3)) * 0.3, 0, 1)  # positives sit around 0.35-0.65
    tuned = tune_thresholds(gold, probs)
    assert multilabel_f1(gold, probs >= tuned)["micro_f1"] > multilabel_f1(gold, probs >= 0.5)["micro_f1"]


def test_rare_labels_keep_the_shared_threshold():
    rng = np.random.default_rng(1)
    gold = np.zeros((300, 2), bool)
    gold[:100, 0] = True  # a frequent label
    gold[:3, 1] = True  # a rare one: 3 positives
    probs = np.clip(gold * 0.4 + rng.random((300, 2)) * 0.4, 0, 1)
    tuned = tune_thresholds(gold, probs, min_positives=20)
    shared = tuned[1]
    f1_at = [multilabel_f1(gold, probs >= t)["micro_f1"] for t in np.arange(0.05, 0.951, 0.025)]
    assert multilabel_f1(gold, probs >= shared)["micro_f1"] == pytest.approx(max(f1_at))
