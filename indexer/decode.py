"""The work done in decoding worker processes: one record -> the :class:`Decoded` item the writer
stores. Fetch the bytes once (file read or WADO-RS, :func:`chextriev.io.sources.fetch_bytes`),
hash them, merge the DICOM tags into the record (:func:`chextriev.io.dicom.merge_tags`), apply
the view rule (:func:`chextriev.io.fields.view_decision`), decode, prepare the pixels for the
model, and make the thumbnail and the preview, all through THE image contract
(:mod:`chextriev.io.pixels`, the one the upload and the evaluator use): ``model_pixels`` (driven
by the model's ``max_input_side``: its square input side, the pre-shrink being exact with
respect to the model's own resize, or the full resolution for a ``crop``-mode model),
``encode_thumbnail`` (a 128 px grey JPEG, stored and served as it is) and ``encode_preview`` (an
8-bit JPEG of about 1024 px, ``preview_side``), from the decoded pixels of a record that passed
the privacy rules.

Everything here is picklable and free of torch, so that worker processes start fast.

The embedding boxes are scaled back to the original pixel grid by the writer. A record's GIVEN
boxes (ImaGenome scene graphs, the synthetic archive's) travel in original pixels in
``Decoded.boxes``.

A record whose view is known from its DICOM tags before fetching (a DICOMweb search result) and
is not frontal is skipped without being fetched.

Privacy (:class:`IngestPolicy`, in the task arguments): a DICOM marked ``BurnedInAnnotation
YES`` (text such as the patient's name drawn into the pixels) is skipped with that reason unless
``keep_burned_in``; with a :class:`~chextriev.io.deid.Deidentifier` every catalog field leaves
the worker de-identified (``Decoded.meta``: keyed pseudonyms, ``2.25.`` UIDs, shifted dates or
years; ``chextriev/io/deid.py``), so nothing raw reaches the writer or the database. Malformed
fields fail their record alone: a UID that is not one (an empty one is absent), an identifier
longer than the catalog holds; a date that is not one is dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chextriev.errors import ImageReadError, SourceError
from chextriev.io.deid import UID_FIELDS, Deidentifier
from chextriev.io.dicom import dicom_metadata, is_dicom, merge_tags
from chextriev.io.fields import (
    normalise_age,
    normalise_date,
    normalise_sex,
    normalise_text,
    uid_problem,
    view_decision,
)
from chextriev.io.images import read_image
from chextriev.io.pixels import encode_preview, encode_thumbnail, model_pixels
from chextriev.io.sources import fetch_bytes, register_connections
from chextriev.records import Record

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
#: The source went away (unreachable service): not stored, so the next run fetches it again.
UNAVAILABLE = "unavailable"
#: The longest identifiers the catalog holds (longer ones fail their record, with the reason).
IDENTIFIER_LIMITS = {"image_id": 256, "patient_id": 128, "study_id": 128}
#: ViewPosition is a DICOM CS (at most 16 characters); a longer one is cut.
MAX_VIEW = 16
BURNED_IN_REASON = ("BurnedInAnnotation YES: the pixels may show patient identifiers (index "
                    "with --keep-burned-in to keep such images)")


@dataclass(frozen=True)
class IngestPolicy:
    """What a decoding worker does for privacy: ``deidentifier`` (``None``: fields stored as
    read) and ``keep_burned_in`` (``False``: images marked BurnedInAnnotation YES are skipped).
    Picklable: it travels in the task arguments."""

    deidentifier: Deidentifier | None = None
    keep_burned_in: bool = False


class FieldError(ValueError):
    """A catalog field of one record that cannot be stored (the record fails alone)."""


@dataclass
class Decoded:
    """The result of decoding one record (what crosses the process boundary)."""

    key: str  # the record's ledger key (a file's resolved path, or dicomweb:...; its keyed
    # hash when the run pseudonymises: chextriev.io.deid.ledger_pseudonym)
    file_size: int
    mtime_ns: int
    content_hash: str | None
    status: str  # ok / skipped / failed / unavailable
    reason: str | None = None
    fmt: str | None = None
    # normalised: image_id, patient_id, study_id, study/series/sop_instance_uid, view, sex,
    # age, study_date, known_findings
    meta: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray | None = None  # (h, w) float32 in [0, 1]: chextriev.io.pixels.model_pixels
    original_hw: tuple[int, int] | None = None  # (H, W) of the file
    thumbnail: bytes | None = None  # grey JPEG (chextriev.io.pixels.encode_thumbnail), stored as it is
    # Model outputs computed elsewhere (a distributed shard): embedding (D,), probabilities (C,),
    # region_probabilities (18, C) | None, region_embeddings (18, R) | None, boxes (18, 4)
    # original pixels, box_source.
    embedded: dict[str, Any] | None = None
    version: str | None = None  # the record's version ("<size>:<mtime_ns>", None = immutable)
    boxes: np.ndarray | None = None  # the record's given (18, 4) boxes, original pixels
    preview: bytes | None = None  # grey JPEG, longer side <= preview_side (None: not made)

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


def catalog_meta(record: Record, policy: IngestPolicy | None = None) -> dict[str, Any]:
    """The catalog's fields of a record (tags already merged): ids, UIDs, view, sex, age, date,
    known findings (``{finding: 0/1}`` or None), de-identified by ``policy.deidentifier``.

    Raises:
        FieldError: a UID that is not a DICOM UID, or an identifier longer than the catalog's
            column (:data:`IDENTIFIER_LIMITS`). Empty UIDs and identifiers are absent (None).
    """
    meta = record.meta
    known = None
    if record.labels is not None and record.class_names:
        known = {name: int(v) for name, v in zip(record.class_names, record.labels)}
    fields = {
        "image_id": normalise_text(record.image_id),
        "patient_id": normalise_text(record.patient_id),
        "study_id": normalise_text(record.study_id),
        **{name: normalise_text(meta.get(name)) for name in UID_FIELDS},
        "study_date": normalise_date(meta.get("study_date") or meta.get("StudyDate")),
        "sex": normalise_sex(meta.get("sex")),
        "age": normalise_age(meta.get("age")),
        "known_findings": known,
        "raw_view": record.view,
    }
    for name in UID_FIELDS:
        problem = fields[name] and uid_problem(fields[name])
        if problem:  # the value itself is not repeated: it may identify the patient
            raise FieldError(f"invalid {name}: {problem}")
    deidentifier = policy.deidentifier if policy else None
    if deidentifier is not None:
        fields = deidentifier.apply(fields, image_id_source=meta.get("image_id_source"))
    for name, limit in IDENTIFIER_LIMITS.items():
        if fields[name] and len(fields[name]) > limit:
            raise FieldError(f"{name} is longer than {limit} characters ({len(fields[name])})")
    return fields


def _decided_view(result: Decoded) -> str | None:
    view, skip = view_decision(result.meta.pop("raw_view", None))
    result.meta["view"] = view[:MAX_VIEW] if view else view
    if skip:
        result.status, result.reason = SKIPPED, skip
    return skip


def decode(record: Record, max_input_side: int | None = None, *, known_hash: str | None = None,
           policy: IngestPolicy | None = None, preview_side: int = 0) -> Decoded:
    """Fetch, hash, merge tags, de-identify, check the view and burned-in annotations, decode
    one record and prepare its pixels for a model that reads at most ``max_input_side``
    (``LoadedModel.max_input_side``; None: the full resolution). Never raises for a bad record:
    failures become ``status="failed"`` with the reason; an unreachable source becomes
    ``status="unavailable"``.

    ``known_hash``: the hash recorded for this key; when the content still has that hash, the
    pixels are not decoded (``status="ok"``, ``pixels=None``: only the file's mtime changed).
    ``policy``: :class:`IngestPolicy` (default: nothing de-identified, burned-in images skipped).
    ``preview_side``: longest side of the preview made from the decoded pixels (0: none).
    With a de-identifying policy the item's ``key`` is the record's ledger pseudonym
    (:func:`private`)."""
    policy = policy or IngestPolicy()
    return private(_decode(record, max_input_side, known_hash, policy, preview_side), record,
                   policy)


def private(result: Decoded, record: Record, policy: IngestPolicy | None) -> Decoded:
    """``result`` as it may leave the worker under ``policy``: with a de-identifier, the ledger
    key is its keyed hash (:func:`chextriev.io.deid.ledger_pseudonym`), the reason names no
    file, and an item that failed before its fields were read gets a pseudonymous image id
    only (no raw file name reaches the writer)."""
    deidentifier = policy.deidentifier if policy is not None else None
    if deidentifier is None:
        return result
    result.key = deidentifier.ledger_key(record.key)
    result.reason = deidentifier.scrub(result.reason, record.key)
    if not result.meta.get("pseudonymised"):
        result.meta = {"image_id": deidentifier.pseudonym(record.image_id or record.key),
                       "pseudonymised": True}
    return result


def shown_key(record: Record, policy: IngestPolicy | None) -> str:
    """How logs name a record: its key, or its ledger pseudonym when de-identifying."""
    deidentifier = policy.deidentifier if policy is not None else None
    return record.key if deidentifier is None else deidentifier.ledger_key(record.key)


def _decode(record: Record, max_input_side: int | None, known_hash: str | None,
            policy: IngestPolicy, preview_side: int) -> Decoded:
    size, mtime = split_version(record.version)
    result = Decoded(record.key, size, mtime, None, OK, version=record.version)
    if record.meta.get("tags_merged"):  # the view is known from the tags: skip before fetching
        try:
            result.meta = catalog_meta(record, policy)
        except FieldError as error:
            result.status, result.reason = FAILED, str(error)
            return result
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
        tags = dicom_metadata(data) if is_dicom(data) else {}
        if tags:
            merge_tags(record, tags)
        result.meta = catalog_meta(record, policy)
        if _decided_view(result):
            return result
        if not policy.keep_burned_in and _burned_in(tags):
            result.status, result.reason = SKIPPED, BURNED_IN_REASON
            return result
        loaded = read_image(data)
        pixels = np.asarray(loaded.pixels, dtype=np.float32)
        if pixels.ndim != 2 or min(pixels.shape) < 8:
            raise ImageReadError(record.key, f"unexpected pixel array shape {pixels.shape}")
        result.fmt = loaded.format
        result.original_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
        result.pixels = model_pixels(pixels, max_input_side).pixels
        result.thumbnail = encode_thumbnail(pixels)
        result.preview = encode_preview(pixels, preview_side)
        if record.boxes is not None and record.box_mask.any():
            result.boxes = np.asarray(record.boxes, dtype=np.float32)
    except ImageReadError as error:
        result.status, result.reason = FAILED, error.reason
    except FieldError as error:
        result.status, result.reason = FAILED, str(error)
    except Exception as error:  # noqa: BLE001 - a broken file must never stop the run
        result.status, result.reason = FAILED, f"{type(error).__name__}: {error}"
    if result.status != OK:
        result.pixels = result.thumbnail = result.preview = None
    return result


def _burned_in(tags: dict[str, Any]) -> bool:
    value = tags.get("BurnedInAnnotation")
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value or "").strip().upper() == "YES"


def given_boxes(decoded: Decoded) -> np.ndarray | None:
    """The record's given boxes in pixels of ``decoded.pixels`` (the model pixels: the original
    boxes times the scale of each axis, :class:`chextriev.io.pixels.ModelPixels`), or None."""
    if decoded.boxes is None or decoded.pixels is None or decoded.original_hw is None:
        return None
    height, width = decoded.pixels.shape
    scale = np.array([width / decoded.original_hw[1], height / decoded.original_hw[0]] * 2,
                     np.float32)
    return np.asarray(decoded.boxes, np.float32) * scale


def decode_task(args: tuple) -> Decoded:
    """``decode`` for the decoding pool (one picklable argument):
    ``(record, max_input_side, known_hash[, policy[, preview_side]])``."""
    record, max_input_side, known_hash, *rest = args
    return decode(record, max_input_side, known_hash=known_hash, policy=rest[0] if rest else None,
                  preview_side=rest[1] if len(rest) > 1 else 0)


def init_worker(connections) -> None:
    """Pool initializer: make the source's connections (DICOMweb) usable in this worker."""
    register_connections(connections)
