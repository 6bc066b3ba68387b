"""Classification metrics: per-class AUROC and Youden thresholds (SPEC section 5).

* :func:`auroc` is rank based (Mann-Whitney U): tied scores share their average rank, so a tie
  between a positive and a negative counts one half. A set with a single label value gives
  ``nan`` (undefined), never 0 or 0.5. Unknown labels (NaN) are ignored.
* :func:`per_class_auroc` reports every class and the mean over the defined ones.
* :func:`youden_thresholds` picks per class the threshold maximising ``sensitivity +
  specificity - 1`` on validation data; :func:`threshold_metrics` applies given thresholds to
  test data (prediction = ``score >= threshold``).
* F1 beside AUROC: :func:`classification_report` also chooses per class the threshold of
  maximal F1 on validation (:func:`chextriev.training.thresholds.max_f1_thresholds`, the rule
  training saves in every checkpoint) and reports test F1 at it, and test F1 at the thresholds
  saved in the checkpoint when given (``saved_thresholds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from chextriev.training.thresholds import max_f1_thresholds


def _pair(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {labels.shape} differs from scores shape {scores.shape}")
    keep = ~np.isnan(labels) & ~np.isnan(scores)
    return labels[keep] == 1, scores[keep]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) against 0/1 ``labels`` (n,).

    Returns ``nan`` when only one label value is present (undefined).
    """
    y, s = _pair(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _names(n: int, class_names: Sequence[str] | None) -> list[Any]:
    names = list(class_names) if class_names is not None else list(range(n))
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    return names


def per_class_auroc(
    labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """AUROC per class of ``scores`` (N, C) against ``labels`` (N, C).

    Returns ``{"per_class": {name: auc or None}, "mean": float or None, "n_defined": int,
    "undefined_classes": [...]}``; undefined classes (one label value) are ``None`` and left
    out of the mean.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (N, C)")
    names = _names(labels.shape[1], class_names)
    values = np.array([auroc(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])
    defined = ~np.isnan(values)
    return {
        "per_class": {name: (float(v) if d else None) for name, v, d in zip(names, values, defined)},
        "mean": float(values[defined].mean()) if defined.any() else None,
        "n_defined": int(defined.sum()),
        "undefined_classes": [name for name, d in zip(names, defined) if not d],
    }


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold ``t`` maximising TPR - FPR for the rule ``score >= t`` (nan if undefined).

    Candidates are the distinct scores; among equal J the highest threshold wins.
    """
    y, s = _pair(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # threshold = this value
    j = tp[last_of_value] / n_pos - fp[last_of_value] / n_neg
    return float(s_sorted[last_of_value][int(np.argmax(j))])


def youden_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) Youden thresholds of (N, C) validation ``scores`` against ``labels``; nan = undefined."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    return np.array([youden_threshold(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])


def threshold_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> dict[Any, dict[str, Any]]:
    """Sensitivity, specificity, precision and F1 per class for ``score >= threshold``.

    ``labels``/``scores`` (N, C), ``thresholds`` (C,). A ratio with a zero denominator (or a
    class whose threshold is nan) is ``None``.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    names = _names(labels.shape[1], class_names)
    out: dict[Any, dict[str, Any]] = {}

    def ratio(a: int, b: int) -> float | None:
        return float(a / b) if b > 0 else None

    for c, name in enumerate(names):
        t = float(thresholds[c])
        y, s = _pair(labels[:, c], scores[:, c])
        if np.isnan(t):
            out[name] = {"threshold": None, "sensitivity": None, "specificity": None,
                         "precision": None, "f1": None, "support": int(y.sum())}
            continue
        pred = s >= t
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        tn = int((~pred & ~y).sum())
        out[name] = {
            "threshold": t,
            "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp),
            "precision": ratio(tp, tp + fp),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "support": int(y.sum()),
        }
    return out


def mean_f1(per_class: dict[Any, dict[str, Any]]) -> float | None:
    """Mean F1 over the classes of a :func:`threshold_metrics` result where it is defined."""
    values = [v["f1"] for v in per_class.values() if v.get("f1") is not None]
    return float(np.mean(values)) if values else None


def classification_report(
    test_labels: np.ndarray,
    test_scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    val_labels: np.ndarray | None = None,
    val_scores: np.ndarray | None = None,
    saved_thresholds: np.ndarray | None = None,
    saved_rule: str | None = None,
) -> dict[str, Any]:
    """AUROC on test, plus thresholds chosen on validation and applied to test: Youden's
    (``"thresholds"``) and max F1 (``"f1"``); with ``saved_thresholds (C,)`` (a checkpoint's,
    NaN = none) also test F1 at those (``"saved_thresholds"``).

    Without validation data the two chosen sections say so (``None``) rather than choosing
    thresholds on the test set.
    """
    report: dict[str, Any] = {"auroc": per_class_auroc(test_labels, test_scores, class_names)}
    if val_labels is not None and val_scores is not None:
        thresholds = youden_thresholds(val_labels, val_scores)
        report["thresholds"] = {
            "chosen_on": "validation (Youden J)",
            "per_class": threshold_metrics(test_labels, test_scores, thresholds, class_names),
        }
        f1_thresholds, _ = max_f1_thresholds(val_labels, val_scores)
        per_class = threshold_metrics(test_labels, test_scores, f1_thresholds, class_names)
        report["f1"] = {"chosen_on": "validation (max F1)", "per_class": per_class, "mean": mean_f1(per_class)}
    else:
        report["thresholds"] = None
        report["f1"] = None
    report["saved_thresholds"] = None
    if saved_thresholds is not None:
        per_class = threshold_metrics(test_labels, test_scores, np.asarray(saved_thresholds, np.float64), class_names)
        report["saved_thresholds"] = {"rule": saved_rule or "saved in the checkpoint", "per_class": per_class,
                                      "mean": mean_f1(per_class)}
    return report
