"""The one record type every reader yields (reader -> record -> region boxes -> ...).

Conventions shared by the whole project:

* images are loaded by :func:`chextriev.io.images.load_image` into one normalised array type:
  ``np.ndarray`` of ``float32``, shape ``(H, W)``, values in ``[0, 1]``, 1 = bright (bone),
  whatever the source (8/16-bit PNG, JPEG, RGBA, DICOM MONOCHROME1/2);
* region boxes are ``(18, 4)`` float32 ``x1, y1, x2, y2`` in pixels of the *original* image,
  in :data:`chextriev.vocab.REGIONS` order; a missing region is a row of NaN (masked, never
  dropped);
* labels are 0/1 float32 arrays over ``class_names``: image-level ``(C,)`` and region-level
  ``(18, C)``; ``None`` means unknown (an unlabelled archive image), not normal;
* every record has a ``key``, its stable identity in an indexing ledger: the resolved absolute
  path for files, ``dicomweb:<service root>/studies/<S>/series/<E>/instances/<I>`` for a
  DICOMweb instance (never with credentials); and a ``version`` for change detection:
  ``"<size>:<mtime_ns>"`` for files, ``None`` for immutable sources (a DICOMweb instance is
  immutable by its SOPInstanceUID).

Records are plain picklable data (they cross into decoding worker processes) and never carry
credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.vocab import NUM_REGIONS


@dataclass
class Record:
    """One radiograph and what is known about it."""

    source: str | Path | bytes
    image_id: str
    patient_id: str | None = None
    study_id: str | None = None
    view: str | None = None
    class_names: tuple[str, ...] = ()
    labels: np.ndarray | None = None  # (C,) 0/1
    region_labels: np.ndarray | None = None  # (18, C) 0/1
    boxes: np.ndarray | None = None  # (18, 4) x1 y1 x2 y2, original pixels, NaN = missing
    image_size: tuple[int, int] | None = None  # (H, W) of the original image, when known
    origin: str = ""  # which reader and file produced this record
    split: str | None = None  # train / validate / test when the dataset says
    meta: dict[str, Any] = field(default_factory=dict)  # study_date, sex, age, uids, ...
    key: str = ""  # ledger identity; default: the resolved absolute path of a file source
    version: str | None = None  # "<size>:<mtime_ns>" for files; None = immutable source

    def __post_init__(self) -> None:
        if not self.key and isinstance(self.source, (str, Path)):
            self.key = os.path.realpath(self.source)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float32)
            if self.class_names and self.labels.shape != (len(self.class_names),):
                raise ValueError(
                    f"{self.image_id}: labels shape {self.labels.shape} does not match "
                    f"{len(self.class_names)} classes"
                )
        if self.region_labels is not None:
            self.region_labels = np.asarray(self.region_labels, dtype=np.float32)
            if self.region_labels.shape[0] != NUM_REGIONS:
                raise ValueError(f"{self.image_id}: region_labels must have {NUM_REGIONS} rows")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float32)
            if self.boxes.shape != (NUM_REGIONS, 4):
                raise ValueError(f"{self.image_id}: boxes must be ({NUM_REGIONS}, 4), got {self.boxes.shape}")

    @property
    def box_mask(self) -> np.ndarray:
        """(18,) bool: True where the region box is present."""
        if self.boxes is None:
            return np.zeros(NUM_REGIONS, dtype=bool)
        return ~np.isnan(self.boxes).any(axis=1)

    @property
    def is_normal(self) -> bool:
        """True when labels are known and all zero."""
        return self.labels is not None and not bool(np.any(self.labels))


def any_finding(labels: np.ndarray, axis: int = -1) -> np.ndarray:
    """OR over ``axis`` of 0/1/NaN labels: 1 where any entry is 1, else NaN where any is unknown,
    else 0 (the abnormality label of a row of findings)."""
    labels = np.asarray(labels, dtype=np.float32)
    positive = (labels == 1).any(axis=axis)
    unknown = np.isnan(labels).any(axis=axis)
    return np.where(positive, 1.0, np.where(unknown, np.nan, 0.0)).astype(np.float32)


def abnormality_record(record: Record) -> Record:
    """``record`` relabelled for the abnormality class list (:data:`chextriev.vocab.ABNORMAL_CLASSES`)
    from its findings: abnormal when it holds any of them (:func:`any_finding`), per region too;
    unknown labels stay unknown. For readers whose normal flag is "no positive finding"
    (the synthetic archive)."""
    from dataclasses import replace

    from chextriev.vocab import ABNORMAL_CLASSES

    labels = None if record.labels is None else any_finding(record.labels)[None]
    region = None if record.region_labels is None else any_finding(record.region_labels)[:, None]
    return replace(record, class_names=ABNORMAL_CLASSES, labels=labels, region_labels=region,
                   meta={**record.meta, "findings_of": tuple(record.class_names)})


def empty_boxes() -> np.ndarray:
    """(18, 4) float32 of NaN: no region known."""
    return np.full((NUM_REGIONS, 4), np.nan, dtype=np.float32)
