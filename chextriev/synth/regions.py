"""The 18 region boxes from the drawn anatomy, and region labels from lesion masks.

Lung zones split each lung as Chest ImaGenome does: apical (top fifth), upper / mid / lower
(thirds of the lung height), hilar (medial part of the middle), costophrenic angle (lateral
part of the base). A region is positive for a finding when a lesion with that finding
covers at least ``MIN_SHARE`` of the lesion or of the region (the whole lung: any overlap).
"""

from __future__ import annotations

import numpy as np

from chextriev.vocab import NUM_REGIONS, REGIONS

MIN_SHARE = 0.15
LUNG_REGIONS = {side: [i for i, name in enumerate(REGIONS) if name.startswith(side)] for side in ("right", "left")}
HEART_REGIONS = [REGIONS.index("cardiac silhouette"), REGIONS.index("mediastinum")]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-edge bounding box (x1, y1, x2, y2) of a boolean mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _band(mask: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return out


def lung_zones(lung: np.ndarray, side: str) -> dict[str, np.ndarray]:
    """Zone masks (bool, same shape) of one lung mask: keys as the REGIONS suffixes."""
    box = bbox(lung)
    if box is None:
        return {}
    x1, top, x2, bottom = box
    h, w = bottom - top, x2 - x1
    medial_right = side == "right"  # the patient's right lung is on the image left
    hilar_x = (x2 - int(0.45 * w), x2) if medial_right else (x1, x1 + int(0.45 * w))
    lateral_x = (x1, x1 + int(0.5 * w)) if medial_right else (x2 - int(0.5 * w), x2)
    W = lung.shape[1]
    return {
        "lung": lung,
        "apical zone": _band(lung, top, top + int(0.2 * h), 0, W),
        "upper lung zone": _band(lung, top, top + h // 3, 0, W),
        "mid lung zone": _band(lung, top + h // 3, top + 2 * h // 3, 0, W),
        "lower lung zone": _band(lung, top + 2 * h // 3, bottom, 0, W),
        "hilar structures": _band(lung, top + int(0.33 * h), top + int(0.6 * h), *hilar_x),
        "costophrenic angle": _band(lung, bottom - int(0.17 * h), bottom, *lateral_x),
    }


def region_masks(lung_right, lung_left, heart, mediastinum, trachea, v) -> list[np.ndarray | None]:
    """18 boolean region masks in REGIONS order (None = region not drawn).

    v: body v coordinate per pixel (carina at 0.3) to cut the upper mediastinum and trachea.
    """
    masks: list[np.ndarray | None] = [None] * NUM_REGIONS
    tops = []
    for side, lung in (("right", lung_right), ("left", lung_left)):
        for key, mask in lung_zones(lung, side).items():
            masks[REGIONS.index(f"{side} {key}")] = mask
        box = bbox(lung)
        if box is not None:
            tops.append(box[1])
    top = min(tops) if tops else 0
    below_top = np.zeros_like(heart)
    below_top[top:] = True
    masks[REGIONS.index("mediastinum")] = (mediastinum | heart) & below_top
    masks[REGIONS.index("upper mediastinum")] = mediastinum & below_top & (v < 0.33)
    masks[REGIONS.index("cardiac silhouette")] = heart
    masks[REGIONS.index("trachea")] = trachea & (v > -0.12) & (v < 0.31)
    return masks


def region_boxes(masks: list[np.ndarray | None]) -> np.ndarray:
    """(18, 4) float32 boxes (pixel edges), NaN rows for empty regions."""
    boxes = np.full((NUM_REGIONS, 4), np.nan, dtype=np.float32)
    for i, mask in enumerate(masks):
        box = bbox(mask) if mask is not None else None
        if box is not None:
            boxes[i] = box
    return boxes


def lesion_regions(mask: np.ndarray, where: str, boxes: np.ndarray, region_areas: np.ndarray) -> list[int]:
    """Regions a lesion mask labels: its lung's regions (or the heart's) it overlaps enough.

    region_areas: (18,) pixel count of each region mask.
    """
    total = int(mask.sum())
    if total == 0:
        return []
    candidates = HEART_REGIONS if where == "heart" else LUNG_REGIONS[where]
    out = []
    for r in candidates:
        if np.isnan(boxes[r, 0]):
            continue
        x1, y1, x2, y2 = boxes[r].astype(int)
        inter = int(mask[y1:y2, x1:x2].sum())
        if inter == 0:
            continue
        whole = REGIONS[r] in ("right lung", "left lung", "cardiac silhouette")
        if whole or inter >= MIN_SHARE * total or inter >= MIN_SHARE * max(int(region_areas[r]), 1):
            out.append(r)
    return out
