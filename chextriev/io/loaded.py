"""What every reader gives back: :class:`LoadedImage`, the ``Source`` it read (a path or the
bytes), the short name used in messages, and the one RGB-to-grey rule. The bottom of
:mod:`chextriev.io`: the PNG/JPEG reader (:mod:`chextriev.io.images`) and the DICOM reader
(:mod:`chextriev.io.dicom`) both build on it, and neither needs the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Source = str | Path | bytes | bytearray | memoryview

#: ITU-R BT.601 luma weights (what Pillow's ``convert("L")`` uses), applied in float.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class LoadedImage:
    """A decoded image and what the file said about it.

    Attributes:
        pixels: ``(H, W)`` float32 in ``[0, 1]``, 1 = bright.
        meta: for DICOM the tags (``PatientID``, ``StudyInstanceUID``, ``SOPInstanceUID``,
            ``SeriesInstanceUID``, ``ViewPosition``, ``StudyDate``, ``PatientSex``,
            ``PatientAge``, ``Modality``, ``Rows``, ``Columns``, ...); for PNG/JPEG ``mode``,
            ``width``, ``height``.
        format: ``"png"``, ``"jpeg"`` or ``"dicom"``.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = ""


def source_name(source: Source) -> str:
    """A short human name for ``source`` (the path, or ``<N bytes>``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3+)`` RGB(A) array -> ``(H, W)`` float32 luminance, same scale; alpha ignored."""
    out = rgb[..., 0] * LUMA_WEIGHTS[0]  # channel by channel: ~4x faster than tensordot
    out += rgb[..., 1] * LUMA_WEIGHTS[1]
    out += rgb[..., 2] * LUMA_WEIGHTS[2]
    return out.astype(np.float32, copy=False)
