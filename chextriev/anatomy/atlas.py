"""The anatomy atlas: one template box per region in normalised image coordinates.

The atlas is the fallback source of region boxes (SPEC section 4, "Anatomy boxes for a new
image"): it serves every region when no detector is trained and fills the regions a detector
misses. Boxes are stored as fractions of the image width and height, so one template serves
any image size.

>>> atlas = Atlas.default()
>>> atlas.boxes_for(512, 512).shape
(18, 4)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.records import Record
from chextriev.vocab import NUM_REGIONS, REGIONS

log = logging.getLogger(__name__)

ATLAS_FORMAT_VERSION = 1

#: A frontal (PA/AP) chest radiograph template, (x1, y1, x2, y2) as fractions of width and
#: height. The patient's right side is on the left of the image (radiological convention).
DEFAULT_TEMPLATE: dict[str, tuple[float, float, float, float]] = {
    "right lung": (0.12, 0.12, 0.48, 0.80),
    "right apical zone": (0.18, 0.12, 0.45, 0.22),
    "right upper lung zone": (0.13, 0.15, 0.47, 0.36),
    "right mid lung zone": (0.12, 0.36, 0.47, 0.56),
    "right lower lung zone": (0.12, 0.56, 0.47, 0.78),
    "right hilar structures": (0.32, 0.32, 0.46, 0.50),
    "right costophrenic angle": (0.10, 0.68, 0.22, 0.81),
    "left lung": (0.52, 0.12, 0.88, 0.80),
    "left apical zone": (0.55, 0.12, 0.82, 0.22),
    "left upper lung zone": (0.53, 0.15, 0.87, 0.36),
    "left mid lung zone": (0.53, 0.36, 0.88, 0.56),
    "left lower lung zone": (0.53, 0.56, 0.88, 0.78),
    "left hilar structures": (0.54, 0.32, 0.68, 0.50),
    "left costophrenic angle": (0.78, 0.68, 0.90, 0.81),
    "mediastinum": (0.38, 0.10, 0.66, 0.80),
    "upper mediastinum": (0.40, 0.10, 0.60, 0.38),
    "cardiac silhouette": (0.38, 0.42, 0.74, 0.78),
    "trachea": (0.46, 0.04, 0.54, 0.36),
}


def default_template() -> np.ndarray:
    """(18, 4) float32 normalised default boxes in :data:`REGIONS` order."""
    return np.array([DEFAULT_TEMPLATE[name] for name in REGIONS], dtype=np.float32)


def normalise_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel boxes ``(..., 4)`` -> fractions of ``width``/``height`` (NaN rows stay NaN)."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32) / scale


def _record_size(record: Record) -> tuple[int, int] | None:
    if record.image_size is not None:
        height, width = record.image_size
        if height > 0 and width > 0:
            return int(height), int(width)
    return None


@dataclass
class Atlas:
    """Template region boxes in normalised ``[0, 1]`` coordinates.

    Attributes:
        boxes: ``(18, 4)`` float32, ``x1, y1, x2, y2`` as fractions of width/height, in
            :data:`chextriev.vocab.REGIONS` order; every row is finite.
        counts: ``(18,)`` int64, how many training boxes each row was fitted on (0 = the
            anatomical default).
    """

    boxes: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_REGIONS, dtype=np.int64))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.boxes.shape != (NUM_REGIONS, 4):
            raise DataFormatError(f"atlas boxes must be ({NUM_REGIONS}, 4), got {self.boxes.shape}")
        if self.counts.shape != (NUM_REGIONS,):
            raise DataFormatError(f"atlas counts must be ({NUM_REGIONS},), got {self.counts.shape}")
        if not np.isfinite(self.boxes).all():
            raise DataFormatError("atlas boxes must be finite (no NaN rows)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def default(cls) -> Atlas:
        """The anatomical template of a frontal radiograph, with no training data."""
        return cls(default_template(), np.zeros(NUM_REGIONS, dtype=np.int64))

    @classmethod
    def fit(cls, records: Iterable[Record]) -> Atlas:
        """Fit the template on the region boxes of ``records``.

        Each box is normalised by its record's ``image_size`` ``(H, W)``; per region and per
        coordinate the median over the records where that region is present is taken (robust
        to a few wrong boxes). Records without boxes or without a known image size are
        skipped; regions never seen keep the anatomical default.
        """
        normalised: list[np.ndarray] = []
        skipped = 0
        for record in records:
            size = _record_size(record)
            if record.boxes is None or size is None:
                skipped += 1
                continue
            normalised.append(normalise_boxes(record.boxes, *size))
        if skipped:
            log.info("atlas fit: skipped %d records without boxes or image size", skipped)
        template = default_template()
        counts = np.zeros(NUM_REGIONS, dtype=np.int64)
        if not normalised:
            log.warning("atlas fit: no record has region boxes; using the anatomical default")
            return cls(template, counts)
        stack = np.stack(normalised)  # (N, 18, 4)
        present = np.isfinite(stack).all(axis=2)  # (N, 18)
        for region in range(NUM_REGIONS):
            rows = stack[present[:, region], region]
            counts[region] = len(rows)
            if len(rows):
                box = np.median(rows, axis=0)
                box = np.clip(box, 0.0, 1.0)
                if box[2] > box[0] and box[3] > box[1]:
                    template[region] = box
        missing = [REGIONS[r] for r in range(NUM_REGIONS) if counts[r] == 0]
        if missing:
            log.info("atlas fit: regions never seen, default kept: %s", ", ".join(missing))
        log.info("atlas fitted on %d records", len(normalised))
        return cls(template, counts)

    # ------------------------------------------------------------------ use
    def boxes_for(self, height: int, width: int) -> np.ndarray:
        """``(18, 4)`` float32 pixel boxes for an image of ``height`` x ``width`` pixels."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        scale = np.array([width, height, width, height], dtype=np.float32)
        return (self.boxes * scale).astype(np.float32)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON/pickle-friendly dict (plain lists), e.g. for checkpoint hyper-parameters."""
        return {
            "version": ATLAS_FORMAT_VERSION,
            "regions": list(REGIONS),
            "boxes": [[float(v) for v in row] for row in self.boxes],
            "counts": [int(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Atlas:
        """Inverse of :meth:`to_dict`; checks the region order it was saved with."""
        try:
            version = int(data.get("version", ATLAS_FORMAT_VERSION))
            boxes = np.asarray(data["boxes"], dtype=np.float32)
            counts = np.asarray(data.get("counts", [0] * NUM_REGIONS), dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise DataFormatError(f"not an atlas dict ({error}); expected keys 'boxes', 'counts'") from None
        if version != ATLAS_FORMAT_VERSION:
            raise DataFormatError(f"atlas format version {version} is not supported (expected {ATLAS_FORMAT_VERSION})")
        regions = data.get("regions")
        if regions is not None and tuple(regions) != REGIONS:
            raise DataFormatError("atlas was saved with a different region order than chextriev.vocab.REGIONS")
        return cls(boxes, counts)
