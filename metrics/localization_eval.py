"""Pixel-level localization of a model: heatmaps and boxes against true lesions.

Ground truth comes from the synthetic archive (``chextriev.synth.archive.load_lesions``: boxes
and masks per lesion) or from records read with lesion boxes (NIH, CheXpert:
``record.meta["lesion_boxes"]``, boxes only; with ``box_masks=True`` the boxes filled in serve as
masks for TIoU/TIoR, as in HAM's published evaluation). Heatmaps come from
``chextriev.localization.cam.heatmap`` and boxes from ``heatmap_to_boxes``. Findings are mapped
to the model's classes with :func:`metrics.model_eval.class_mapping` (the vocabulary's NIH /
CheXpert / ImaGenome equivalences); findings without a counterpart are skipped and listed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from chextriev.records import Record
from metrics.localization import BOX_THRESHOLDS, BoxCase, box_localization, pixel_localization
from metrics.model_eval import class_mapping

log = logging.getLogger(__name__)

# (finding in the data's vocabulary, box (4,), mask (H, W) bool or None)
Truth = tuple[str, np.ndarray, np.ndarray | None]


def synthetic_truth(archive_dir: Path) -> Callable[[Record], list[Truth]]:
    """Ground truth reader for a synthetic archive (lesion boxes and masks)."""
    from chextriev.synth.archive import load_lesions

    def read(record: Record) -> list[Truth]:
        out = []
        for lesion in load_lesions(archive_dir, record.image_id):
            mask = getattr(lesion, "mask", None)
            out.append((lesion.finding, np.asarray(lesion.box, dtype=np.float64),
                        None if mask is None else np.asarray(mask, dtype=bool)))
        return out

    return read


def lesion_box_truth(record: Record) -> list[Truth]:
    """Ground truth of a record read with lesion boxes (NIH ``BBox_List``, CheXpert's HAM
    annotations): its ``meta["lesion_boxes"]`` (boxes only, no masks)."""
    return [(b["finding"], np.asarray(b["box"], dtype=np.float64), None) for b in record.meta.get("lesion_boxes", [])]


#: the NIH reader's boxes are read the same way
nih_truth = lesion_box_truth


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``box`` ``(x1, y1, x2, y2)`` (pixel edges, clipped to the image)."""
    height, width = shape
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    c0, r0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
    c1, r1 = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
    mask = np.zeros((height, width), dtype=bool)
    if c1 > c0 and r1 > r0:
        mask[r0:r1, c0:c1] = True
    return mask


#: heatmap methods: CAM / Grad-CAM / Grad-CAM++ of any model, PCAM's probability map (a global
#: classifier trained with --pooling pcam), and HAM (its own trained network)
LOCALIZATION_METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcampp", "pcam", "ham")


def evaluate_localization(
    loaded: Any,
    records: Sequence[Record],
    truth: Callable[[Record], list[Truth]],
    *,
    boxes: Sequence[np.ndarray | None] | None = None,
    method: str = "gradcam",
    box_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    max_images: int | None = 50,
    thresholds: Sequence[float] = BOX_THRESHOLDS,
    ham_combine: str | None = None,
    box_masks: bool = False,
) -> dict[str, Any]:
    """Box (IoU/IoBB accuracy at T) and, where masks exist, pixel (TIoU/TIoR) localization.

    ``loaded``: a retrieval model, ``LoadedModel`` or ``CamPipeline`` for ``cam``, ``gradcam``,
    ``gradcampp``; a HAM network (``chextriev.localization.load_ham``) for ``ham`` (heatmap
    :func:`~chextriev.localization.ham.ham_heatmap`, ``ham_combine`` overriding the
    checkpoint's ``combine``). ``boxes``: region boxes (18, 4) per record (e.g. those used at
    embedding), else the record's. Only records with ground truth are scored, at most
    ``max_images`` of them. ``box_masks``: a true lesion without a mask (NIH, CheXpert boxes)
    is scored for TIoU/TIoR against its box filled in (HAM's published evaluation does this);
    ``pixels["truth"]`` says ``"lesion masks"``, ``"boxes as masks"`` or both.
    """
    from chextriev.errors import UnknownNameError
    from chextriev.io.images import load_image
    from chextriev.localization import ham_heatmap, heatmap, heatmap_to_boxes

    if method not in LOCALIZATION_METHODS:
        raise UnknownNameError("localization method", method, LOCALIZATION_METHODS)

    model_classes = list(loaded.class_names)
    cases: list[BoxCase] = []
    heatmaps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    mask_kinds: set[str] = set()
    skipped: set[str] = set()
    used = 0
    for i, record in enumerate(tqdm(records, desc="localization", leave=False)):
        if max_images is not None and used >= max_images:
            break
        items = truth(record)
        if not items:
            continue
        by_finding: dict[str, list[tuple[np.ndarray, np.ndarray | None]]] = defaultdict(list)
        for finding, box, mask in items:
            by_finding[finding].append((box, mask))
        image = load_image(record.source)
        region_boxes = boxes[i] if boxes is not None else record.boxes
        used += 1
        for finding, entries in by_finding.items():
            pairs = class_mapping(model_classes, [finding])
            if not pairs:
                skipped.add(finding)
                continue
            model_name = model_classes[pairs[0][0]]
            if method == "ham":
                hm = ham_heatmap(loaded, image, model_name, combine=ham_combine)
            else:
                hm = heatmap(loaded, image, region_boxes, model_name, method=method)
            pred = np.asarray(heatmap_to_boxes(hm, threshold=box_threshold), dtype=np.float64).reshape(-1, 4)
            gt = np.stack([b for b, _ in entries]).reshape(-1, 4)
            cases.append(BoxCase(record.image_id, finding, gt, pred))
            entry_masks = [m for _, m in entries if m is not None and m.shape == hm.shape]
            kind = "lesion masks"
            if not entry_masks and box_masks:
                entry_masks, kind = [box_mask(b, hm.shape) for b, _ in entries], "boxes as masks"
            if entry_masks:
                heatmaps.append(hm)
                masks.append(np.logical_or.reduce(entry_masks))
                mask_kinds.add(kind)
    if skipped:
        log.info("findings without a model class (not scored): %s", sorted(skipped))
    if method == "ham":
        method_name = f"ham ({ham_combine or loaded.config.combine})"
    else:
        method_name = method
    return {
        "method": method_name,
        "box_threshold": box_threshold,
        "n_images": used,
        "unmapped_findings": sorted(skipped),
        "boxes": box_localization(cases, thresholds),
        "pixels": ({**pixel_localization(heatmaps, masks, thresholds, mask_threshold),
                    "truth": " and ".join(sorted(mask_kinds))} if heatmaps else None),
    }
