"""Localization metrics: boxes (ChestX-ray8), pixel masks (HAM) and anatomy regions.

Boxes are ``x1, y1, x2, y2`` in pixels (any consistent frame). Definitions (SPEC section 5):

* ``IoU(p, g) = |p ∩ g| / |p ∪ g|``; ``IoBB(p, g) = |p ∩ g| / |p|`` (over the *predicted*
  box's area).
* Box accuracy at ``T`` (ChestX-ray8): share of ground-truth (image, class) cases hit, a case
  being hit when any predicted box for that class overlaps any of its ground-truth boxes by
  more than ``T`` (strictly). A case with no predicted box is a miss.
* Pixel masks (HAM): the heatmap is binarised by the product's rule, the mask the viewer shows
  (:func:`chextriev.localization.regions.heatmap_mask`: pixels at or above ``mask_threshold`` x
  the maximum; the boxes of box accuracy come from the same mask); ``IoU`` and ``IoR``
  (intersection over the predicted mask's area) against the true mask; ``TIoU(T)`` / ``TIoR(T)``
  = share of cases whose IoU / IoR exceeds ``T``. The heatmaps the product makes (Grad-CAM and
  its kin, HAM) are min-max normalised (minimum 0, maximum 1), where this rule and binarising
  the min-max normalised map (the rule used here before) give the same mask.
* Regions: per region and finding, AUROC of node probabilities against region labels over the
  images where the region is present.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chextriev.errors import UnknownNameError
from chextriev.localization.regions import heatmap_mask
from chextriev.vocab import REGIONS
from metrics.classification import auroc

#: ChestX-ray8 thresholds T = 0.1 ... 0.7.
BOX_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MEASURES: tuple[str, ...] = ("iou", "iobb")


def _boxes(b: Any) -> np.ndarray:
    arr = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(n,) areas of (n, 4) boxes; inverted boxes have area 0."""
    b = _boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_intersection(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, G) intersection areas of (P, 4) and (G, 4) boxes."""
    p, g = _boxes(pred), _boxes(gt)
    w = np.minimum(p[:, None, 2], g[None, :, 2]) - np.maximum(p[:, None, 0], g[None, :, 0])
    h = np.minimum(p[:, None, 3], g[None, :, 3]) - np.maximum(p[:, None, 1], g[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, G) intersection over union; 0 where the union is empty."""
    inter = box_intersection(pred, gt)
    union = box_area(pred)[:, None] + box_area(gt)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iobb(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, G) intersection over the predicted box's area; 0 for an empty predicted box."""
    inter = box_intersection(pred, gt)
    area = np.broadcast_to(box_area(pred)[:, None], inter.shape)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def best_overlap(pred: np.ndarray, gt: np.ndarray, measure: str = "iou") -> float:
    """Largest overlap between any predicted and any ground-truth box (0 when none predicted)."""
    if measure not in MEASURES:
        raise UnknownNameError("overlap measure", measure, MEASURES)
    p, g = _boxes(pred), _boxes(gt)
    if len(p) == 0 or len(g) == 0:
        return 0.0
    m = box_iou(p, g) if measure == "iou" else box_iobb(p, g)
    return float(m.max())


@dataclass
class BoxCase:
    """One ground-truth (image, class) case: its true boxes (G, 4) and predicted boxes (P, 4)."""

    image_id: str
    finding: str
    gt_boxes: np.ndarray
    pred_boxes: np.ndarray


def accuracy_at(values: np.ndarray, thresholds: Iterable[float]) -> dict[float, float | None]:
    """Share of ``values`` strictly above each threshold (``None`` when there is no value)."""
    v = np.asarray(values, dtype=np.float64)
    return {float(t): (float((v > t).mean()) if v.size else None) for t in thresholds}


def box_localization(
    cases: Sequence[BoxCase], thresholds: Sequence[float] = BOX_THRESHOLDS
) -> dict[str, Any]:
    """ChestX-ray8 accuracy at each T for IoU and IoBB, overall and per finding.

    Returns ``{"n_cases", "thresholds", "iou": {T: acc}, "iobb": {T: acc}, "mean_iou",
    "mean_iobb", "per_finding": {finding: {"n_cases", "iou", "iobb"}}}``.
    """
    best = {m: np.array([best_overlap(c.pred_boxes, c.gt_boxes, m) for c in cases]) for m in MEASURES}
    findings = sorted({c.finding for c in cases})
    per_finding = {}
    for f in findings:
        sel = np.array([c.finding == f for c in cases])
        per_finding[f] = {"n_cases": int(sel.sum()), **{m: accuracy_at(best[m][sel], thresholds) for m in MEASURES}}
    return {
        "n_cases": len(cases),
        "thresholds": [float(t) for t in thresholds],
        **{m: accuracy_at(best[m], thresholds) for m in MEASURES},
        "mean_iou": float(best["iou"].mean()) if len(cases) else None,
        "mean_iobb": float(best["iobb"].mean()) if len(cases) else None,
        "per_finding": per_finding,
    }


def mask_overlaps(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[float, float]:
    """``(IoU, IoR)`` of two (H, W) boolean masks; IoR = intersection / predicted area."""
    p = np.asarray(pred_mask, dtype=bool)
    g = np.asarray(gt_mask, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: predicted {p.shape}, true {g.shape}")
    inter = float((p & g).sum())
    union = float((p | g).sum())
    area = float(p.sum())
    return (inter / union if union else 0.0, inter / area if area else 0.0)


def pixel_localization(
    heatmaps: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    thresholds: Sequence[float] = BOX_THRESHOLDS,
    mask_threshold: float = 0.5,
) -> dict[str, Any]:
    """HAM TIoU(T) and TIoR(T) over cases (one heatmap (H, W) and true mask (H, W) each), each
    heatmap binarised as the viewer shows it (:func:`chextriev.localization.regions.heatmap_mask`
    at ``mask_threshold`` x its maximum)."""
    if len(heatmaps) != len(gt_masks):
        raise ValueError(f"{len(heatmaps)} heatmaps for {len(gt_masks)} masks")
    pairs = np.array([mask_overlaps(heatmap_mask(h, mask_threshold), m) for h, m in zip(heatmaps, gt_masks)])
    pairs = pairs.reshape(-1, 2)
    return {
        "n_cases": len(pairs),
        "mask_threshold": float(mask_threshold),
        "TIoU": accuracy_at(pairs[:, 0], thresholds),
        "TIoR": accuracy_at(pairs[:, 1], thresholds),
        "mean_iou": float(pairs[:, 0].mean()) if len(pairs) else None,
        "mean_ior": float(pairs[:, 1].mean()) if len(pairs) else None,
    }


def region_auroc(
    region_labels: np.ndarray,
    region_probabilities: np.ndarray,
    region_mask: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    region_names: Sequence[str] = REGIONS,
) -> dict[str, Any]:
    """AUROC per (region, finding) of node probabilities (N, R, C) against labels (N, R, C).

    ``region_mask`` (N, R) bool keeps only present regions (a missing box's node is not scored).
    Undefined cells (one label value) are ``None`` and left out of the means. Returns
    ``{"per_region": {region: {finding: auc}}, "per_finding_mean": {finding: mean over
    regions}, "mean": mean over defined cells, "n_defined"}``.
    """
    y = np.asarray(region_labels, dtype=np.float64)
    p = np.asarray(region_probabilities, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 3:
        raise ValueError(f"region labels {y.shape} and probabilities {p.shape} must both be (N, R, C)")
    _, r, c = y.shape
    if region_mask is not None:
        mask = np.asarray(region_mask, dtype=bool)
        y = np.where(mask[:, :, None], y, np.nan)
    names = list(class_names) if class_names is not None else list(range(c))
    regions = list(region_names)[:r] if len(region_names) >= r else list(range(r))
    table = np.array([[auroc(y[:, i, j], p[:, i, j]) for j in range(c)] for i in range(r)]).reshape(r, c)
    defined = ~np.isnan(table)
    per_finding = {}
    for j, name in enumerate(names):
        col = table[:, j][defined[:, j]]
        per_finding[name] = float(col.mean()) if col.size else None
    return {
        "per_region": {
            regions[i]: {names[j]: (float(table[i, j]) if defined[i, j] else None) for j in range(c)}
            for i in range(r)
        },
        "per_finding_mean": per_finding,
        "mean": float(table[defined].mean()) if defined.any() else None,
        "n_defined": int(defined.sum()),
    }
