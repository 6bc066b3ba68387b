"""Mean IoU of region boxes from the detector, the atlas and the provider against true boxes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.iou import mean_iou, per_region_iou
from chextriev.anatomy.provider import BoxProvider, RegionDetector
from chextriev.records import Record
from chextriev.vocab import REGIONS

log = logging.getLogger(__name__)


def evaluate_box_sources(
    records: Sequence[Record],
    atlas: Atlas,
    detector: RegionDetector | None = None,
    *,
    loader: Callable | None = None,
    min_score: float = 0.3,
    batch_size: int = 8,
) -> dict:
    """Compare box sources on ``records`` that carry true boxes.

    Returns ``{"images": n, "atlas": {"mean_iou", "per_region"}, "detector": {...} | None,
    "provider": {...} | None}``; ``per_region`` maps region name -> mean IoU. ``detector``
    scores raw detector boxes (a region it misses counts as IoU 0), ``provider`` the
    detector+atlas merge that inference uses.
    """
    if loader is None:
        from chextriev.io.images import load_image as loader
    usable = [r for r in records if r.boxes is not None and r.box_mask.any()]
    truths: list[np.ndarray] = []
    atlas_boxes: list[np.ndarray] = []
    detector_boxes: list[np.ndarray] = []
    provider_boxes: list[np.ndarray] = []
    provider = BoxProvider(atlas, detector, min_score=min_score, batch_size=batch_size) if detector else None
    for start in tqdm(range(0, len(usable), batch_size), desc="evaluating boxes", unit="batch", leave=False):
        chunk = usable[start : start + batch_size]
        images = [loader(r.source) for r in chunk]
        for record, image in zip(chunk, images, strict=True):
            truth = record.boxes
            if record.image_size is not None and tuple(record.image_size) != image.shape[:2]:
                (sh, sw), (dh, dw) = record.image_size, image.shape[:2]
                truth = truth * np.array([dw / sw, dh / sh, dw / sw, dh / sh], np.float32)
            truths.append(truth)
            atlas_boxes.append(atlas.boxes_for(*image.shape[:2]))
        if detector is not None:
            for boxes, _ in detector.predict(images):
                detector_boxes.append(np.nan_to_num(boxes, nan=0.0))  # a missed region scores 0
            provider_boxes.extend(boxes for boxes, _ in provider.boxes_for(images))

    def summary(preds: list[np.ndarray]) -> dict | None:
        if not preds:
            return None
        per = per_region_iou(preds, truths)
        return {"mean_iou": mean_iou(preds, truths), "per_region": dict(zip(REGIONS, map(float, per)))}

    result = {"images": len(usable), "atlas": summary(atlas_boxes),
              "detector": summary(detector_boxes), "provider": summary(provider_boxes)}
    log.info("box IoU on %d images: atlas %s, detector %s, provider %s", len(usable),
             *(f"{result[k]['mean_iou']:.3f}" if result[k] else "-" for k in ("atlas", "detector", "provider")))
    return result
