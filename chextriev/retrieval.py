"""THE retrieval core: exact k-NN and the CheXtriev retrieval metrics (SPEC section 5).

One bottom-layer module (numpy; torch only for the optional device path) serving training
validation (:func:`retrieval_scores`), evaluation (``metrics.retrieval`` re-exports this
module) and the exact oracle of the Faiss tests (:func:`exact_knn`). ``chextriev`` and
``metrics`` both import it; it imports nothing above ``chextriev.errors``.

Exact search: :func:`exact_knn` (queries against a gallery, cosine = inner product of
L2-normalised rows, blocked, optional exclusions by equal keys) and
:func:`neighbors_from_embeddings` (every row against all rows, the query itself excluded by
id, optionally results of the same patient or study).

Metrics, fully vectorised:

For each class ``c`` the queries are the images with ``y[c] = 1``; a retrieved item is
relevant when its own ``y[c] = 1`` (other labels ignored). For one query with relevance
``rel_1..rel_k`` over its top ``k`` results (the query itself already excluded):

* ``HR = sum(rel) / k`` (the published "hit rate"; it is precision at k);
* ``AP = mean over the relevant positions i of (hits among the first i) / i``, 0 when no hit
  (the denominator is the hits found in the top k, not all relevant gallery items);
* ``RR = 1 / rank of the first hit``, 0 when no hit;
* ``hit = 1`` when any of the k results is relevant (optional, ``hit_rate=True``).

Per class: the mean over its queries. ``skip=True`` (the default of the published code) drops
queries with no hit from every mean; ``skip=False`` keeps them as zeros. A class with no query
(or, with ``skip``, no kept query) is *undefined*: its values are ``None`` and it is left out
of both averages (``empty_class="undefined"``, the default); ``empty_class="zero"`` reproduces
the published behaviour and counts it as 0 in the class average.

Averages: ``class_average`` is the unweighted mean over defined classes;
``weighted_average`` weights each defined class by its number of queries (images positive for
it, before any skipping).

Example::

    >>> import numpy as np
    >>> labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])
    >>> neighbors = np.array([[1, 2], [0, 3], [3, 0], [0, 1]])
    >>> m = retrieval_metrics(neighbors, labels, k=2, skip=False)
    >>> round(m["per_class"][0]["mAP"], 3), m["per_class"][1]["n_queries"]
    (1.0, 2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from chextriev.errors import UnknownNameError

log = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("mAP", "mHR", "mRR")
EMPTY_CLASS_MODES: tuple[str, ...] = ("undefined", "zero")
EXCLUDE_SAME_MODES: tuple[str, ...] = ("none", "patient", "study")


def _check_mode(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UnknownNameError(kind, value, valid)


def apply_exclusions(neighbors: np.ndarray, exclude_mask: np.ndarray | None, k: int) -> np.ndarray:
    """Drop excluded results and keep the first ``k`` that remain, in order.

    ``neighbors`` (n, m) int (``-1`` = no result), ``exclude_mask`` (n, m) bool (True = drop),
    ``m >= k``. Returns (n, k) int64; rows with fewer than ``k`` kept results are padded with
    ``-1`` (an empty slot, never relevant).
    """
    neighbors = np.asarray(neighbors)
    if exclude_mask is None:
        return neighbors[:, :k].astype(np.int64, copy=False)
    exclude_mask = np.asarray(exclude_mask, dtype=bool)
    if exclude_mask.shape != neighbors.shape:
        raise ValueError(
            f"exclude_mask shape {exclude_mask.shape} must equal neighbors shape {neighbors.shape}"
        )
    drop = exclude_mask | (neighbors < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept first, original order
    kept = np.take_along_axis(neighbors, order, axis=1).astype(np.int64)
    kept[np.take_along_axis(drop, order, axis=1)] = -1
    return kept


def per_query_scores(neighbors: np.ndarray, gallery_labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per (query, class) AP, HR, RR and hit over the top ``k`` results.

    ``neighbors`` (n, >=k) int gallery rows (``-1`` = empty slot), ``gallery_labels`` (g, C)
    0/1 (NaN = unknown, never relevant). Returns arrays of shape (n, C), float64:
    ``AP``, ``HR``, ``RR``, ``hit``.
    """
    top = np.asarray(neighbors)[:, :k].astype(np.int64, copy=False)
    if top.shape[1] < k:
        raise ValueError(f"neighbors has {top.shape[1]} columns; need at least k={k}")
    gallery = np.asarray(gallery_labels) == 1  # (g, C) bool; NaN and 0 -> False
    valid = top >= 0
    rel = gallery[np.where(valid, top, 0)] & valid[:, :, None]  # (n, k, C)
    cum = np.cumsum(rel, axis=1, dtype=np.int32)  # hits among the first i
    n_hits = cum[:, -1, :]  # (n, C)
    ranks = np.arange(1, k + 1, dtype=np.float64)[None, :, None]
    precision_sum = np.where(rel, cum / ranks, 0.0).sum(axis=1)
    ap = np.divide(precision_sum, n_hits, out=np.zeros(n_hits.shape), where=n_hits > 0)
    first = rel.argmax(axis=1)  # first True (0 when none)
    rr = np.where(n_hits > 0, 1.0 / (first + 1), 0.0)
    return {"AP": ap, "HR": n_hits / float(k), "RR": rr, "hit": (n_hits > 0).astype(np.float64)}


def retrieval_metrics(
    neighbors: np.ndarray,
    labels: np.ndarray,
    k: int,
    skip: bool = True,
    *,
    query_labels: np.ndarray | None = None,
    exclude_mask: np.ndarray | None = None,
    empty_class: str = "undefined",
    hit_rate: bool = False,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """mAP@k, mHR@k, mRR@k per class, class average and query-weighted average.

    Args:
        neighbors: (n, >=k) int gallery row indices per query, best first, the query itself
            already excluded; ``-1`` marks an empty slot.
        labels: (g, C) 0/1 gallery labels. Queries are the gallery rows (``n == g``) unless
            ``query_labels`` is given.
        k: number of results scored.
        skip: drop queries with no relevant result from every mean (published default).
        query_labels: (n, C) 0/1 labels of the queries when they differ from the gallery.
        exclude_mask: (n, m) bool over ``neighbors``: True drops that result (e.g. same
            patient) before the first ``k`` are taken, so ``neighbors`` should hold spares.
        empty_class: ``"undefined"`` (class with no query -> ``None``, left out of averages) or
            ``"zero"`` (published behaviour: counted as 0 in the class average).
        hit_rate: also report ``hit`` (share of queries with any relevant item in the top k).
        class_names: keys of ``per_class``; class indices when omitted.

    Returns:
        ``{"k", "options", "per_class": {name: {"mAP", "mHR", "mRR", ["hit"], "n_queries",
        "n_kept"}}, "class_average": {...}, "weighted_average": {...}, "n_classes_defined"}``.
        Undefined values are ``None``.
    """
    _check_mode("empty-class mode", empty_class, EMPTY_CLASS_MODES)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gallery = np.asarray(labels)
    if gallery.ndim != 2:
        raise ValueError(f"labels must be (n, C), got shape {gallery.shape}")
    queries = gallery if query_labels is None else np.asarray(query_labels)
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != queries.shape[0]:
        raise ValueError(
            f"neighbors must be (n_queries={queries.shape[0]}, >=k), got shape {neighbors.shape}"
        )
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query labels have {queries.shape[1]} classes, gallery {gallery.shape[1]}")
    if neighbors.size and neighbors.max(initial=-1) >= gallery.shape[0]:
        raise ValueError(f"neighbor index {neighbors.max()} out of range for {gallery.shape[0]} gallery rows")
    n_classes = gallery.shape[1]
    names = list(class_names) if class_names is not None else list(range(n_classes))
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")

    top = apply_exclusions(neighbors, exclude_mask, k)
    scores = per_query_scores(top, gallery, k)
    is_query = queries == 1  # (n, C)
    kept = is_query & (scores["hit"] > 0) if skip else is_query
    n_queries = is_query.sum(axis=0)
    n_kept = kept.sum(axis=0)
    keys = [("mAP", "AP"), ("mHR", "HR"), ("mRR", "RR")] + ([("hit", "hit")] if hit_rate else [])
    means = {
        out: np.divide((scores[src] * kept).sum(axis=0), n_kept, out=np.full(n_classes, np.nan), where=n_kept > 0)
        for out, src in keys
    }
    defined = n_kept > 0

    per_class: dict[Any, dict[str, Any]] = {}
    for c, name in enumerate(names):
        entry: dict[str, Any] = {m: (float(means[m][c]) if defined[c] else None) for m, _ in keys}
        entry["n_queries"] = int(n_queries[c])
        entry["n_kept"] = int(n_kept[c])
        per_class[name] = entry

    class_average: dict[str, float | None] = {}
    weighted_average: dict[str, float | None] = {}
    weights = n_queries * defined
    for m, _ in keys:
        values = means[m]
        if empty_class == "zero":
            class_average[m] = float(np.nan_to_num(values, nan=0.0).mean()) if n_classes else None
        else:
            class_average[m] = float(values[defined].mean()) if defined.any() else None
        weighted_average[m] = (
            float((np.nan_to_num(values) * weights).sum() / weights.sum()) if weights.sum() > 0 else None
        )
    undefined = [names[c] for c in range(n_classes) if not defined[c]]
    if undefined:
        log.info("k=%d: classes without %squeries (undefined): %s", k, "kept " if skip else "", undefined)
    return {
        "k": int(k),
        "options": {
            "skip": bool(skip),
            "empty_class": empty_class,
            "hit_rate": bool(hit_rate),
            "excluded_results": exclude_mask is not None,
        },
        "per_class": per_class,
        "class_average": class_average,
        "weighted_average": weighted_average,
        "n_classes_defined": int(defined.sum()),
        "undefined_classes": undefined,
    }


def retrieval_metrics_at(
    neighbors: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (3, 5, 10), skip: bool = True, **options: Any
) -> dict[int, dict[str, Any]]:
    """:func:`retrieval_metrics` for several k from one neighbour array (n, >=max(ks))."""
    return {int(k): retrieval_metrics(neighbors, labels, int(k), skip, **options) for k in ks}


def _codes(values: Sequence[Any] | np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    """Integer codes for a sequence of ids (None/'' count as unique unknowns)."""
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} embeddings")
    table: dict[Any, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v == "":
            out[i] = -(i + 1)  # unknown: equal to nothing else
        else:
            out[i] = table.setdefault(v, len(table))
    return out


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``(n, D)`` float32 rows L2-normalised (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (n, D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def exact_knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    exclude: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    normalize: bool = True,
    block_size: int = 2048,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product of every query against the whole gallery.

    Args:
        queries: (n, D) float.
        gallery: (g, D) float.
        k: results per query.
        exclude: pairs ``(query_keys (n,), gallery_keys (g,))`` of int64; gallery row ``j`` is
            never a result of query ``i`` when ``query_keys[i] == gallery_keys[j]`` for any pair
            (e.g. the query itself, or the same patient).
        normalize: L2-normalise both sides first (cosine similarity); zero rows stay zero.
        block_size: queries scored per block ((block, g) similarity matrix in memory).
        device: torch device for the matrix products (e.g. ``"cuda"``); numpy when ``None``.

    Returns:
        ``(indices (n, k) int64 gallery rows, scores (n, k) float32)`` best first; slots beyond
        the admissible gallery items hold ``-1`` and ``-inf``. Equal scores are ordered by
        gallery row, except that a tie straddling the k-th place is cut arbitrarily.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = normalize_rows(queries) if normalize else np.asarray(queries, dtype=np.float32)
    base = normalize_rows(gallery) if normalize else np.asarray(gallery, dtype=np.float32)
    if q.ndim != 2 or base.ndim != 2 or (len(base) and q.shape[1] != base.shape[1]):
        raise ValueError(f"queries {q.shape} and gallery {base.shape} must be (n, D) and (g, D)")
    n, g = q.shape[0], base.shape[0]
    for query_keys, gallery_keys in exclude:
        if len(query_keys) != n or len(gallery_keys) != g:
            raise ValueError(f"exclusion keys of length {len(query_keys)}/{len(gallery_keys)} for {n} queries "
                             f"and {g} gallery rows")
    kk = min(k, g)
    indices = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    if kk == 0:
        return indices, scores
    torch_base = None
    if device is not None:
        import torch

        torch_base = torch.from_numpy(base).to(device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        if torch_base is not None:
            import torch

            sims = (torch.from_numpy(q[start:stop]).to(device) @ torch_base.T).cpu().numpy()
        else:
            sims = q[start:stop] @ base.T  # (b, g)
        for query_keys, gallery_keys in exclude:
            sims[np.asarray(query_keys)[start:stop, None] == np.asarray(gallery_keys)[None, :]] = -np.inf
        if kk < g:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(g), (stop - start, g)).copy()
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)  # best first; ties by lower row
        idx = np.take_along_axis(part, order, axis=1)
        sc = np.take_along_axis(part_scores, order, axis=1)
        idx[~np.isfinite(sc)] = -1
        indices[start:stop, :kk] = idx
        scores[start:stop, :kk] = sc
    return indices, scores


def neighbors_from_embeddings(
    embeddings: np.ndarray,
    k: int,
    *,
    exclude_self_ids: Sequence[Any] | np.ndarray | None = None,
    patient_ids: Sequence[Any] | np.ndarray | None = None,
    study_ids: Sequence[Any] | np.ndarray | None = None,
    exclude_same: str = "none",
    block_size: int = 2048,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of every row against all rows (queries = gallery).

    Args:
        embeddings: (n, D) float; rows are L2-normalised here (zero rows stay zero).
        k: results per query.
        exclude_self_ids: (n,) ids; a result with the query's id is excluded (the query itself
            and any duplicate of it). Default: row index (only the query row itself).
        patient_ids, study_ids: (n,) ids used by ``exclude_same``.
        exclude_same: ``"none"``, ``"patient"`` or ``"study"``: also exclude results of the
            same patient / study as the query.
        block_size: queries scored per block ((block, n) similarity matrix in memory).
        device: torch device for the matrix products (e.g. ``"cuda"``); numpy when ``None``.

    Returns:
        ``(neighbors (n, k) int64, scores (n, k) float32)`` best first; slots beyond the number
        of admissible gallery items hold ``-1`` and ``-inf`` (see :func:`exact_knn`).
    """
    _check_mode("exclude-same mode", exclude_same, EXCLUDE_SAME_MODES)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (n, D), got {emb.shape}")
    n = emb.shape[0]
    self_codes = _codes(exclude_self_ids, n, "exclude_self_ids")
    if self_codes is None:
        self_codes = np.arange(n, dtype=np.int64)
    exclude = [(self_codes, self_codes)]
    if exclude_same == "patient":
        group_codes = _codes(patient_ids, n, "patient_ids")
        if group_codes is None:
            raise ValueError("exclude_same='patient' needs patient_ids")
        exclude.append((group_codes, group_codes))
    elif exclude_same == "study":
        group_codes = _codes(study_ids, n, "study_ids")
        if group_codes is None:
            raise ValueError("exclude_same='study' needs study_ids")
        exclude.append((group_codes, group_codes))
    return exact_knn(emb, emb, k, exclude=exclude, block_size=block_size, device=device)


def retrieval_scores(embeddings: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """Class-averaged ``mAP``, ``mHR``, ``mRR`` at ``k`` of self-retrieval, the published
    protocol (query excluded, ``skip=False``, classes without a query left out): what training
    validation selects checkpoints on.

    ``embeddings (N, D)``, ``labels (N, C)`` 0/1 (NaN = unknown: never a query, never
    relevant). Zeros when no class has a query or ``N < 2``.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape[0] < 2:
        return {"mAP": 0.0, "mHR": 0.0, "mRR": 0.0}
    neighbors, _ = neighbors_from_embeddings(embeddings, k)
    average = retrieval_metrics(neighbors, labels, k, skip=False)["class_average"]
    return {name: float(average[name]) if average[name] is not None else 0.0 for name in METRIC_NAMES}


def same_group_mask(neighbors: np.ndarray, group_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """(n, m) bool: True where result ``neighbors[q, i]`` shares the query's group id.

    For precomputed results: pass as ``exclude_mask`` to :func:`retrieval_metrics`.
    ``-1`` slots are False. ``group_ids`` (n,) over the gallery rows (queries = gallery).
    """
    neighbors = np.asarray(neighbors)
    codes = _codes(group_ids, len(group_ids), "group_ids")
    assert codes is not None
    valid = neighbors >= 0
    return valid & (codes[np.where(valid, neighbors, 0)] == codes[: neighbors.shape[0], None])
