"""IoU between two sets of 18 region boxes (anatomy detector and atlas evaluation)."""

from __future__ import annotations

import numpy as np


def region_box_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-region IoU of ``pred`` ``(..., 4)`` against ``truth`` ``(..., 4)`` (``x1, y1, x2, y2``).

    Typically both are ``(18, 4)`` pixel boxes; returns ``(18,)`` float32 with NaN where either
    box is missing (a NaN row). A degenerate box of zero area gives IoU 0.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape or pred.shape[-1] != 4:
        raise ValueError(f"box shapes differ or are not (..., 4): {pred.shape} vs {truth.shape}")
    ix1 = np.maximum(pred[..., 0], truth[..., 0])
    iy1 = np.maximum(pred[..., 1], truth[..., 1])
    ix2 = np.minimum(pred[..., 2], truth[..., 2])
    iy2 = np.minimum(pred[..., 3], truth[..., 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_p = np.clip(pred[..., 2] - pred[..., 0], 0, None) * np.clip(pred[..., 3] - pred[..., 1], 0, None)
    area_t = np.clip(truth[..., 2] - truth[..., 0], 0, None) * np.clip(truth[..., 3] - truth[..., 1], 0, None)
    union = area_p + area_t - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    missing = np.isnan(pred).any(axis=-1) | np.isnan(truth).any(axis=-1)
    return np.where(missing, np.nan, iou).astype(np.float32)


def mean_iou(preds, truths) -> float:
    """Mean IoU over every (image, region) pair where both boxes exist.

    ``preds`` and ``truths`` are sequences of ``(18, 4)`` arrays (or one ``(N, 18, 4)`` array).
    Returns NaN when no pair exists.
    """
    values = [region_box_iou(p, t) for p, t in zip(preds, truths, strict=True)]
    if not values:
        return float("nan")
    flat = np.concatenate([v.ravel() for v in values])
    flat = flat[~np.isnan(flat)]
    return float(flat.mean()) if flat.size else float("nan")


def per_region_iou(preds, truths) -> np.ndarray:
    """``(18,)`` mean IoU per region over the images where both boxes exist (NaN if none)."""
    stack = np.stack([region_box_iou(p, t) for p, t in zip(preds, truths, strict=True)])
    with np.errstate(invalid="ignore"):
        counts = (~np.isnan(stack)).sum(axis=0)
        sums = np.nansum(stack, axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
