"""The binary 18x18 region adjacency used by V1 (edge type) and AnaXNet (GCN graph).

Two sources:

* :func:`anatomical_adjacency` — a fixed anatomical default: a lung is joined to its zones,
  neighbouring zones of one lung are joined, hila join their mid zone and the mediastinum,
  the four midline structures are joined together, and every node has a self loop;
* :func:`cooccurrence_adjacency` — fitted on training region labels: regions ``i`` and ``j``
  are joined when ``P(j abnormal | i abnormal) >= threshold`` (or the reverse), as in AnaXNet's
  co-occurrence graph. Falls back to the anatomical default when no region labels are known.

Both return ``np.ndarray`` of shape ``(18, 18)``, ``int64`` 0/1, symmetric, with ones on the
diagonal.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from chextriev.vocab import NUM_REGIONS, region_index

_ANATOMICAL_PAIRS: tuple[tuple[str, str], ...] = tuple(
    pair
    for side in ("right", "left")
    for pair in (
        (f"{side} lung", f"{side} apical zone"),
        (f"{side} lung", f"{side} upper lung zone"),
        (f"{side} lung", f"{side} mid lung zone"),
        (f"{side} lung", f"{side} lower lung zone"),
        (f"{side} lung", f"{side} hilar structures"),
        (f"{side} lung", f"{side} costophrenic angle"),
        (f"{side} apical zone", f"{side} upper lung zone"),
        (f"{side} upper lung zone", f"{side} mid lung zone"),
        (f"{side} mid lung zone", f"{side} lower lung zone"),
        (f"{side} lower lung zone", f"{side} costophrenic angle"),
        (f"{side} hilar structures", f"{side} mid lung zone"),
        (f"{side} hilar structures", "mediastinum"),
        (f"{side} lower lung zone", "cardiac silhouette"),
    )
) + (
    ("mediastinum", "upper mediastinum"),
    ("mediastinum", "cardiac silhouette"),
    ("mediastinum", "trachea"),
    ("upper mediastinum", "trachea"),
    ("upper mediastinum", "cardiac silhouette"),
)


def anatomical_adjacency() -> np.ndarray:
    """(18, 18) int64 0/1 symmetric anatomical neighbourhood with self loops."""
    adjacency = np.eye(NUM_REGIONS, dtype=np.int64)
    for a, b in _ANATOMICAL_PAIRS:
        i, j = region_index(a), region_index(b)
        adjacency[i, j] = adjacency[j, i] = 1
    return adjacency


def cooccurrence_adjacency(region_labels: Iterable[np.ndarray | None], threshold: float = 0.3,
                           min_images: int = 5) -> np.ndarray:
    """Co-occurrence graph from training region labels.

    Args:
        region_labels: one ``(18, C)`` 0/1 array per training image (``None`` entries skipped).
        threshold: join ``i`` and ``j`` when ``P(j | i) >= threshold`` or ``P(i | j) >= threshold``.
        min_images: below this many labelled abnormal images, return the anatomical default.

    Returns:
        ``(18, 18)`` int64 0/1 symmetric with ones on the diagonal.
    """
    rows = [np.asarray(r).reshape(NUM_REGIONS, -1).any(axis=1) for r in region_labels if r is not None]
    if not rows:
        return anatomical_adjacency()
    abnormal = np.stack(rows).astype(np.float64)  # (N, 18)
    if int(abnormal.any(axis=1).sum()) < min_images:
        return anatomical_adjacency()
    joint = abnormal.T @ abnormal  # (18, 18) images where both abnormal
    count = np.diag(joint).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(count[:, None] > 0, joint / count[:, None], 0.0)  # P(j | i)
    adjacency = (conditional >= threshold) | (conditional.T >= threshold)
    adjacency = adjacency.astype(np.int64)
    np.fill_diagonal(adjacency, 1)
    return adjacency


def as_tuple(adjacency: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Adjacency as nested tuples (hashable, JSON-friendly) for :class:`ModelConfig`."""
    array = np.asarray(adjacency, dtype=np.int64)
    if array.shape != (NUM_REGIONS, NUM_REGIONS):
        raise ValueError(f"adjacency must be ({NUM_REGIONS}, {NUM_REGIONS}), got {array.shape}")
    return tuple(tuple(int(v) for v in row) for row in array)
