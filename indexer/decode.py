"""The work done in decoding worker processes: read the bytes once, hash them, read the DICOM
tags, decide the view, decode, shrink for the model and make the thumbnail.

Everything here is picklable and free of torch, so that worker processes start fast.

Images are shrunk (aspect ratio kept) so that their longer side is at most ``max_side``
(default: twice the model's input size, the model resizes further anyway); the embedding boxes
are scaled back to the original pixel grid by the pipeline (``Decoded.scale``).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage

from chextriev.errors import ImageReadError
from chextriev.io.dicom import dicom_metadata, is_dicom, parse_dicom_age
from chextriev.io.images import read_image
from indexer.discovery import Candidate, view_decision

THUMBNAIL_SIDE = 192

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass
class Decoded:
    """The result of decoding one candidate (what crosses the process boundary)."""

    path: str
    file_size: int
    mtime_ns: int
    content_hash: str | None
    status: str  # ok / skipped / failed
    reason: str | None = None
    fmt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # normalised: image_id, patient_id, ...
    pixels: np.ndarray | None = None  # (h, w) float32 in [0, 1], shrunk
    original_hw: tuple[int, int] | None = None  # (H, W) of the file
    thumbnail: bytes | None = None  # PNG
    # Model outputs computed elsewhere (a distributed shard): embedding (D,), probabilities (C,),
    # region_probabilities (18, C) | None, region_embeddings (18, R) | None, boxes (18, 4)
    # original pixels, box_source.
    embedded: dict[str, Any] | None = None


def _normalised_meta(candidate: Candidate, tags: dict[str, Any]) -> dict[str, Any]:
    """Merge DICOM tags (preferred) and manifest hints into the catalog's fields."""
    hints = candidate.hints
    stem = os.path.splitext(os.path.basename(candidate.path))[0]
    sex = tags.get("PatientSex") or hints.get("sex")
    age = parse_dicom_age(tags.get("PatientAge")) if tags.get("PatientAge") else hints.get("age")
    return {
        "image_id": hints.get("image_id") or stem,
        "patient_id": tags.get("PatientID") or hints.get("patient_id"),
        "study_id": tags.get("StudyInstanceUID") or hints.get("study_id"),
        "sop_instance_uid": tags.get("SOPInstanceUID"),
        "study_date": tags.get("StudyDate") or hints.get("study_date"),
        "sex": str(sex).strip().upper()[:1] if sex else None,
        "age": float(age) if age is not None else None,
        "known_findings": hints.get("known_findings"),
        "raw_view": tags.get("ViewPosition") or hints.get("view"),
    }


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W)`` -> ``(h, w)`` with ``max(h, w) <= max_side``, aspect kept (box filter)."""
    height, width = pixels.shape
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels.astype(np.float32, copy=False)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = PILImage.fromarray(pixels.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, PILImage.Resampling.BOX), dtype=np.float32)


def thumbnail_png(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> bytes:
    """An 8-bit grayscale PNG with the longer side ``side`` (or smaller if the image is)."""
    small = shrink(pixels, side)
    image = PILImage.fromarray(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def decode(candidate: Candidate, max_side: int = 1024, *, known_hash: str | None = None
           ) -> Decoded:
    """Read, hash, check the view, decode and shrink one file. Never raises for a bad file.

    ``known_hash``: the hash recorded for this path; when the content still has that hash, the
    pixels are not decoded (``status="ok"``, ``pixels=None``: only the mtime changed).
    """
    path = candidate.path
    try:
        stat = os.stat(path)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return Decoded(path, 0, 0, None, FAILED, f"cannot read file: {error.strerror or error}")
    result = Decoded(path, stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest(), OK)
    if known_hash is not None and known_hash == result.content_hash:
        return result
    try:
        tags: dict[str, Any] = {}
        if is_dicom(data):
            tags = dicom_metadata(data)
        result.meta = _normalised_meta(candidate, tags)
        view, skip = view_decision(result.meta.pop("raw_view"))
        result.meta["view"] = view
        if skip:
            result.status, result.reason = SKIPPED, skip
            return result
        loaded = read_image(data)
        pixels = np.asarray(loaded.pixels, dtype=np.float32)
        if pixels.ndim != 2 or min(pixels.shape) < 8:
            raise ImageReadError(path, f"unexpected pixel array shape {pixels.shape}")
        result.fmt = loaded.format
        result.original_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
        result.pixels = shrink(pixels, max_side)
        result.thumbnail = thumbnail_png(pixels)
    except ImageReadError as error:
        result.status, result.reason = FAILED, error.reason
    except Exception as error:  # noqa: BLE001 - a broken file must never stop the run
        result.status, result.reason = FAILED, f"{type(error).__name__}: {error}"
    return result


def decode_task(args: tuple[Candidate, int, str | None]) -> Decoded:
    """``decode`` for ``Pool.imap`` (one picklable argument)."""
    candidate, max_side, known_hash = args
    return decode(candidate, max_side, known_hash=known_hash)
