"""The work done in decoding worker processes: one record -> the :class:`Decoded` item the writer
stores. Fetch the bytes once (file read or WADO-RS, :func:`chextriev.io.sources.fetch_bytes`),
hash them, merge the DICOM tags into the record (:func:`chextriev.io.dicom.merge_tags`), apply
the view rule (:func:`chextriev.io.fields.view_decision`), decode, shrink for the model, and
make the thumbnail.

Everything here is picklable and free of torch, so that worker processes start fast.

Images are shrunk (aspect ratio kept) so that their longer side is at most ``max_side``
(default: twice the model's input size, the model resizes further anyway); the embedding boxes
are scaled back to the original pixel grid by the writer. A record's GIVEN boxes (ImaGenome
scene graphs, the synthetic archive's) travel in original pixels in ``Decoded.boxes``.

A record whose view is known from its DICOM tags before fetching (a DICOMweb search result) and
is not frontal is skipped without being fetched.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage

from chextriev.errors import ImageReadError, SourceError
from chextriev.io.dicom import dicom_metadata, is_dicom, merge_tags
from chextriev.io.fields import normalise_age, normalise_sex, view_decision
from chextriev.io.images import read_image
from chextriev.io.sources import fetch_bytes, register_connections
from chextriev.records import Record

THUMBNAIL_SIDE = 192

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
#: The source went away (unreachable service): not stored, so the next run fetches it again.
UNAVAILABLE = "unavailable"


@dataclass
class Decoded:
    """The result of decoding one record (what crosses the process boundary)."""

    key: str  # the record's ledger key (a file's resolved path, or dicomweb:...)
    file_size: int
    mtime_ns: int
    content_hash: str | None
    status: str  # ok / skipped / failed / unavailable
    reason: str | None = None
    fmt: str | None = None
    # normalised: image_id, patient_id, study_id, study/series/sop_instance_uid, view, sex,
    # age, study_date, known_findings
    meta: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray | None = None  # (h, w) float32 in [0, 1], shrunk
    original_hw: tuple[int, int] | None = None  # (H, W) of the file
    thumbnail: bytes | None = None  # PNG
    # Model outputs computed elsewhere (a distributed shard): embedding (D,), probabilities (C,),
    # region_probabilities (18, C) | None, region_embeddings (18, R) | None, boxes (18, 4)
    # original pixels, box_source.
    embedded: dict[str, Any] | None = None
    version: str | None = None  # the record's version ("<size>:<mtime_ns>", None = immutable)
    boxes: np.ndarray | None = None  # the record's given (18, 4) boxes, original pixels

    @property
    def path(self) -> str:
        """The ledger key (the file path for file records); kept for older callers."""
        return self.key


def split_version(version: str | None) -> tuple[int, int]:
    """``"<size>:<mtime_ns>"`` -> ``(size, mtime_ns)``; ``(0, 0)`` for ``None``/other."""
    if version and ":" in version:
        size, _, mtime = version.partition(":")
        try:
            return int(size), int(mtime)
        except ValueError:
            pass
    return 0, 0


def catalog_meta(record: Record) -> dict[str, Any]:
    """The catalog's fields of a record (tags already merged): ids, UIDs, view, sex, age, date,
    known findings (``{finding: 0/1}`` or None)."""
    meta = record.meta
    known = None
    if record.labels is not None and record.class_names:
        known = {name: int(v) for name, v in zip(record.class_names, record.labels)}
    age = normalise_age(meta.get("age"))
    return {
        "image_id": record.image_id,
        "patient_id": record.patient_id,
        "study_id": record.study_id,
        "study_instance_uid": meta.get("study_instance_uid"),
        "series_instance_uid": meta.get("series_instance_uid"),
        "sop_instance_uid": meta.get("sop_instance_uid"),
        "study_date": meta.get("study_date") or meta.get("StudyDate"),
        "sex": normalise_sex(meta.get("sex")),
        "age": age,
        "known_findings": known,
        "raw_view": record.view,
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


def _decided_view(result: Decoded) -> str | None:
    view, skip = view_decision(result.meta.pop("raw_view", None))
    result.meta["view"] = view
    if skip:
        result.status, result.reason = SKIPPED, skip
    return skip


def decode(record: Record, max_side: int = 1024, *, known_hash: str | None = None) -> Decoded:
    """Fetch, hash, merge tags, check the view, decode and shrink one record. Never raises for a
    bad record: failures become ``status="failed"`` with the reason; an unreachable source
    becomes ``status="unavailable"``.

    ``known_hash``: the hash recorded for this key; when the content still has that hash, the
    pixels are not decoded (``status="ok"``, ``pixels=None``: only the file's mtime changed).
    """
    size, mtime = split_version(record.version)
    result = Decoded(record.key, size, mtime, None, OK, version=record.version)
    if record.meta.get("tags_merged"):  # the view is known from the tags: skip before fetching
        result.meta = catalog_meta(record)
        if _decided_view(result):
            return result
    try:
        data = fetch_bytes(record)
    except SourceError as error:
        result.status, result.reason = UNAVAILABLE, str(error)
        return result
    except ImageReadError as error:
        result.status, result.reason = FAILED, error.reason
        return result
    if record.version is None:
        result.file_size = len(data)
    result.content_hash = hashlib.sha256(data).hexdigest()
    if known_hash is not None and known_hash == result.content_hash:
        return result
    try:
        if is_dicom(data):
            merge_tags(record, dicom_metadata(data))
        result.meta = catalog_meta(record)
        if _decided_view(result):
            return result
        loaded = read_image(data)
        pixels = np.asarray(loaded.pixels, dtype=np.float32)
        if pixels.ndim != 2 or min(pixels.shape) < 8:
            raise ImageReadError(record.key, f"unexpected pixel array shape {pixels.shape}")
        result.fmt = loaded.format
        result.original_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
        result.pixels = shrink(pixels, max_side)
        result.thumbnail = thumbnail_png(pixels)
        if record.boxes is not None and record.box_mask.any():
            result.boxes = np.asarray(record.boxes, dtype=np.float32)
    except ImageReadError as error:
        result.status, result.reason = FAILED, error.reason
    except Exception as error:  # noqa: BLE001 - a broken file must never stop the run
        result.status, result.reason = FAILED, f"{type(error).__name__}: {error}"
    return result


def given_boxes(decoded: Decoded) -> np.ndarray | None:
    """The record's given boxes in pixels of ``decoded.pixels`` (the shrunk image), or None."""
    if decoded.boxes is None or decoded.pixels is None or decoded.original_hw is None:
        return None
    height, width = decoded.pixels.shape
    scale = np.array([width / decoded.original_hw[1], height / decoded.original_hw[0]] * 2,
                     np.float32)
    return np.asarray(decoded.boxes, np.float32) * scale


def decode_task(args: tuple[Record, int, str | None]) -> Decoded:
    """``decode`` for ``Pool.imap`` (one picklable argument)."""
    record, max_side, known_hash = args
    return decode(record, max_side, known_hash=known_hash)


def init_worker(connections) -> None:
    """Pool initializer: make the source's connections (DICOMweb) usable in this worker."""
    register_connections(connections)
