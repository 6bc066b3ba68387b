"""Per-class decision thresholds chosen on validation: the score maximising F1.

Training (:class:`chextriev.training.module.RetrievalModule`) chooses them on the whole
validation set after every validation and saves them in each checkpoint
(:data:`chextriev.checkpoint.THRESHOLDS_KEY`, read by
:func:`chextriev.checkpoint.load_checkpoint`); the server predicts a finding when its
probability reaches its class's threshold, and ``chextriev evaluate`` reports F1 at thresholds
chosen the same way on its validation split (``metrics.classification``).

Rule: prediction = ``score >= t``; ``t`` is the distinct validation score with the highest F1
(``2 TP / (2 TP + FP + FN)``); among equal F1 the highest ``t`` wins. A class without a
positive validation label has no threshold (NaN; the server then uses 0.5). Unknown (NaN)
labels are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: What the saved thresholds say about themselves.
RULE = "max F1 on the validation split"


def max_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1 at it)`` of ``scores (n,)`` against 0/1 ``labels (n,)``; ``(nan, nan)``
    without a positive label."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = ~np.isnan(labels) & ~np.isnan(scores)
    y, s = labels[keep] == 1, scores[keep]
    positives = int(y.sum())
    if positives == 0:
        return float("nan"), float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    predicted = np.arange(1, s_sorted.size + 1)
    last_of_value = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # threshold = this value
    f1 = 2 * tp[last_of_value] / (predicted[last_of_value] + positives)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(s_sorted[last_of_value][best]), float(f1[best])


def max_f1_thresholds(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds (C,), F1 (C,))`` of ``scores (N, C)`` against ``labels (N, C)``."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (N, C)")
    pairs = [max_f1_threshold(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def threshold_entry(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                    epoch: int | None = None) -> dict[str, Any]:
    """What a checkpoint stores: ``{"rule", "class_names", "values", "f1", "n_images", "epoch"}``
    (``None`` for an undefined class)."""
    values, f1 = max_f1_thresholds(labels, scores)

    def listed(array: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in array]

    return {"rule": RULE, "class_names": list(class_names), "values": listed(values), "f1": listed(f1),
            "n_images": int(np.asarray(labels).shape[0]), "epoch": epoch}
