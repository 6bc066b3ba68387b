"""Retrieval scores for model selection during training (mAP@k, and mHR/mRR at k).

This mirrors ``metrics.retrieval.retrieval_metrics`` with the published protocol (SPEC
section 5: per class, the queries are the images positive for it; the query itself is
excluded; ``skip=False``, queries with no hit count as zeros; AP's denominator is the hits in
the top k; unweighted class average over classes that have at least one query). It lives here
because ``chextriev`` must not import ``metrics``; tests/model checks it on a hand-made case.
"""

from __future__ import annotations

import numpy as np


def nearest(embeddings: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Top-``k`` neighbours by inner product (L2-normalised = cosine), the query excluded.

    ``embeddings (N, D)`` -> ``(N, min(k, N-1))`` int64 indices, best first.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    k = min(k, n - 1)
    out = np.empty((n, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def retrieval_scores(embeddings: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """Class-averaged ``mAP``, ``mHR``, ``mRR`` at ``k`` (skip=False).

    ``embeddings (N, D)`` L2-normalised, ``labels (N, C)`` 0/1 (rows with NaN are never
    queries and never relevant). Returns zeros when no class has a query.
    """
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float32), nan=0.0) > 0.5
    neighbors = nearest(embeddings, k)
    if neighbors.shape[1] == 0:
        return {"mAP": 0.0, "mHR": 0.0, "mRR": 0.0}
    kk = neighbors.shape[1]
    ranks = np.arange(1, kk + 1, dtype=np.float64)
    per_class = {"mAP": [], "mHR": [], "mRR": []}
    for c in range(labels.shape[1]):
        queries = np.flatnonzero(labels[:, c])
        if queries.size == 0:
            continue
        relevant = labels[neighbors[queries], c].astype(np.float64)  # (Q, k)
        hits = relevant.sum(axis=1)
        precision = np.cumsum(relevant, axis=1) / ranks
        ap = np.where(hits > 0, (precision * relevant).sum(axis=1) / np.maximum(hits, 1), 0.0)
        first = np.where(hits > 0, relevant.argmax(axis=1) + 1, np.inf)
        per_class["mAP"].append(ap.mean())
        per_class["mHR"].append((hits / k).mean())
        per_class["mRR"].append(np.where(np.isfinite(first), 1.0 / first, 0.0).mean())
    return {name: float(np.mean(values)) if values else 0.0 for name, values in per_class.items()}
