"""Region boxes for images that have none: detector first, atlas for what it misses.

``BoxProvider(atlas, detector).boxes_for(images)`` returns, per image, ``(18, 4)`` float32
pixel boxes (every row finite) and the source that gave them:

* ``"detector"``: every region came from the detector (score >= ``min_score``);
* ``"detector+atlas"``: some regions came from the detector, the rest from the atlas;
* ``"atlas"``: no detector, or it found no region confidently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from chextriev.anatomy.atlas import Atlas
from chextriev.vocab import NUM_REGIONS

log = logging.getLogger(__name__)

SOURCES = ("detector", "detector+atlas", "atlas")


class RegionDetector(Protocol):
    """Anything with the detector's ``predict`` (e.g. :class:`~chextriev.anatomy.detector.AnatomyDetector`)."""

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: boxes ``(18, 4)`` in original pixels (NaN = none) and scores ``(18,)``."""
        ...


def merge_boxes(
    detected: np.ndarray, scores: np.ndarray, fallback: np.ndarray, min_score: float
) -> tuple[np.ndarray, str]:
    """Take ``detected`` rows whose score >= ``min_score`` (and that are finite and non-empty),
    ``fallback`` rows otherwise. All arrays are per region: ``(18, 4)``, ``(18,)``, ``(18, 4)``.
    Returns the merged ``(18, 4)`` float32 boxes and their source string."""
    detected = np.asarray(detected, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if detected.shape != (NUM_REGIONS, 4) or scores.shape != (NUM_REGIONS,):
        raise ValueError(f"detector output must be (18, 4) boxes and (18,) scores, got {detected.shape}, {scores.shape}")
    valid = np.isfinite(detected).all(axis=1) & (detected[:, 2] > detected[:, 0]) & (detected[:, 3] > detected[:, 1])
    use = valid & (np.nan_to_num(scores, nan=0.0) >= min_score)
    merged = np.where(use[:, None], detected, fallback).astype(np.float32)
    if use.all():
        source = "detector"
    elif use.any():
        source = "detector+atlas"
    else:
        source = "atlas"
    return merged, source


class BoxProvider:
    """Gives region boxes to images that have none (SPEC section 4).

    Args:
        atlas: the fallback template (:meth:`Atlas.default` when ``None``).
        detector: an optional trained region detector (see :class:`RegionDetector`).
        min_score: a detector box is used only when its score is at least this.
        batch_size: images per detector call.
    """

    def __init__(
        self,
        atlas: Atlas | None = None,
        detector: RegionDetector | None = None,
        min_score: float = 0.3,
        batch_size: int = 8,
    ):
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.atlas = atlas if atlas is not None else Atlas.default()
        self.detector = detector
        self.min_score = float(min_score)
        self.batch_size = max(1, int(batch_size))

    @property
    def has_detector(self) -> bool:
        return self.detector is not None

    def boxes_for(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, str]]:
        """Per image ``(H, W)``: ``(boxes (18, 4) float32 pixels of that image, source)``."""
        shapes = []
        for image in images:
            array = np.asarray(image)
            if array.ndim < 2:
                raise ValueError(f"images must be (H, W) arrays, got shape {array.shape}")
            shapes.append(array.shape[:2])
        fallbacks = [self.atlas.boxes_for(h, w) for h, w in shapes]
        if self.detector is None or not len(shapes):
            return [(boxes, "atlas") for boxes in fallbacks]
        results: list[tuple[np.ndarray, str]] = []
        for start in range(0, len(shapes), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            predictions = self.detector.predict(chunk)
            if len(predictions) != len(chunk):
                raise ValueError(f"detector returned {len(predictions)} results for {len(chunk)} images")
            for offset, (boxes, scores) in enumerate(predictions):
                results.append(merge_boxes(boxes, scores, fallbacks[start + offset], self.min_score))
        return results

    def __repr__(self) -> str:
        detector = type(self.detector).__name__ if self.detector is not None else None
        return f"BoxProvider(detector={detector}, min_score={self.min_score})"
