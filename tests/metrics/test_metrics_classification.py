"""AUROC (with ties), undefined classes, Youden thresholds, cross-checked by slow loops."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.classification import (
    auroc,
    classification_report,
    per_class_auroc,
    threshold_metrics,
    youden_threshold,
)


def pairwise_auc(y, s):
    pos = [b for a, b in zip(y, s) if a == 1]
    neg = [b for a, b in zip(y, s) if a == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_auroc_hand_computed_and_ties():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # one positive tied with one negative counts one half: pairs (0.5 vs 0.5)=.5, (0.5 vs .2)=1
    assert auroc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert auroc([1, 1, 0, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert auroc([0, 1], [0.9, 0.1]) == 0.0


def test_auroc_single_value_is_undefined_and_nan_labels_ignored():
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([0, 0], [0.1, 0.2]))
    assert auroc([1, np.nan, 0], [0.9, 0.0, 0.1]) == 1.0


def test_auroc_random_against_pairwise():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        s = rng.integers(0, 6, 30) / 5.0  # many ties
        if y.min() == y.max():
            continue
        assert auroc(y, s) == pytest.approx(pairwise_auc(y, s))


def test_per_class_auroc_leaves_undefined_out_of_mean():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.4, 0.2, 0.5], [0.5, 0.4, 0.5]])
    r = per_class_auroc(labels, scores, ["a", "b", "c"])
    assert r["per_class"]["a"] == pytest.approx(0.75)
    assert r["per_class"]["b"] is None and r["per_class"]["c"] is None
    assert r["mean"] == pytest.approx(0.75) and r["n_defined"] == 1
    assert r["undefined_classes"] == ["b", "c"]


def brute_youden(y, s):
    best, best_t = -2, None
    for t in sorted(set(s), reverse=True):
        pred = s >= t
        j = (pred & (y == 1)).sum() / (y == 1).sum() - (pred & (y == 0)).sum() / (y == 0).sum()
        if j > best + 1e-12:
            best, best_t = j, t
    return best_t


def test_youden_hand_and_random():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == pytest.approx(0.6)
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 2, 25)
        s = rng.integers(0, 8, 25) / 7.0
        if y.min() == y.max():
            continue
        assert youden_threshold(y, s) == pytest.approx(brute_youden(y, s))
    assert np.isnan(youden_threshold([1, 1], [0.2, 0.3]))


def test_threshold_metrics_and_report_use_validation_thresholds():
    val_y = np.array([[0], [0], [1], [1]])
    val_s = np.array([[0.1], [0.3], [0.6], [0.8]])
    test_y = np.array([[0], [1], [1], [0], [1]])
    test_s = np.array([[0.7], [0.65], [0.2], [0.1], [0.9]])
    r = classification_report(test_y, test_s, ["x"], val_labels=val_y, val_scores=val_s)
    t = r["thresholds"]["per_class"]["x"]
    # threshold 0.6 from validation: predictions 1,1,0,0,1 -> tp=2 fp=1 fn=1 tn=1
    assert t["threshold"] == pytest.approx(0.6)
    assert t["sensitivity"] == pytest.approx(2 / 3)
    assert t["specificity"] == pytest.approx(1 / 2)
    assert t["precision"] == pytest.approx(2 / 3)
    assert t["f1"] == pytest.approx(4 / 6)
    assert classification_report(test_y, test_s)["thresholds"] is None
    nan = threshold_metrics(test_y, test_s, np.array([np.nan]))
    assert nan[0]["sensitivity"] is None
