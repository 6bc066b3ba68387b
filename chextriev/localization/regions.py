"""Heatmap -> binary mask and boxes (threshold relative to the maximum, connected components).

Published practice (SPEC section 4): ChestX-ray8 thresholds the normalised heatmap and boxes
the isolated regions; HAM keeps the pixels above a threshold of the min-max normalised map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 8-connectivity: diagonal neighbours belong to the same component.
_STRUCTURE = np.ones((3, 3), dtype=bool)


def heatmap_mask(heatmap: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(H, W)`` bool: pixels at or above ``threshold`` x the heatmap's maximum.

    An all-zero (or non-positive) heatmap gives an empty mask.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the maximum in [0, 1], got {threshold}")
    peak = float(np.nanmax(heat)) if heat.size else 0.0
    if peak <= 0.0:
        return np.zeros(heat.shape, dtype=bool)
    return np.nan_to_num(heat, nan=0.0) >= threshold * peak


def heatmap_to_boxes(
    heatmap: np.ndarray, threshold: float = 0.5, min_area: float | None = None
) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x1, y1, x2, y2)`` (pixel edges, ``x2``/``y2`` exclusive) around the connected
    components of :func:`heatmap_mask`, hottest component first.

    Args:
        heatmap: ``(H, W)`` non-negative map (e.g. from :func:`~chextriev.localization.cam.heatmap`).
        threshold: fraction of the maximum a pixel needs.
        min_area: components with fewer pixels are dropped; default 0.1% of the image
            (at least 1 pixel). The hottest component is always kept.
    """
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    mask = heatmap_mask(heat, threshold)
    if not mask.any():
        return []
    if min_area is None:
        min_area = max(1.0, 0.001 * mask.size)
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    peaks = ndimage.maximum(heat, labels, index)
    order = np.argsort(-np.asarray(peaks), kind="stable")
    boxes = []
    for rank, k in enumerate(order):
        if rank > 0 and areas[k] < min_area:
            continue
        rows, cols = ndimage.find_objects((labels == k + 1).astype(np.int32))[0]
        boxes.append((float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return boxes
