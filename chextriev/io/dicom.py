"""DICOM through pydicom: modality LUT, VOI LUT or window, MONOCHROME1 inversion, BitsStored.

The display pipeline (DICOM PS3.3 C.11, PS3.4 N.2) applied by :func:`read_dicom`:

1. stored values (``BitsStored`` respected: unused high bits masked, signed values
   sign-extended);
2. modality LUT: ``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence;
3. VOI: a VOI LUT Sequence when present, else the window ``WindowCenter``/``WindowWidth``
   (the first value when multi-valued) with ``VOILUTFunction`` LINEAR, LINEAR_EXACT or
   SIGMOID; without either, min-max over the image;
4. ``MONOCHROME1`` (or Presentation LUT Shape ``INVERSE``) is inverted so that 1 = bright;
5. result ``(H, W)`` float32 in ``[0, 1]``. Colour images become luminance; multi-frame
   objects give their first frame.

Transfer syntaxes: see ``chextriev/io/README.md``. A default install decodes every syntax a
chest radiograph comes in, with permissively licensed plugins only: uncompressed, deflated and
RLE (pydicom, ``pylibjpeg-rle``), JPEG Lossless process 14 and JPEG extended 12-bit
(``python-gdcm``), JPEG-LS (``pyjpegls``, ``python-gdcm``), JPEG 2000 and HTJ2K
(``pylibjpeg-openjpeg``, ``python-gdcm``), JPEG baseline (Pillow). An unknown transfer syntax
UID, or a syntax with no installed decoder, raises :class:`~chextriev.errors.ImageReadError`
naming the syntax (and, for the latter, the plugins to install).
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import ImageReadError

log = logging.getLogger(__name__)

#: The tags every reader keeps (missing ones are ``None``).
META_KEYS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "ViewPosition",
    "StudyDate",
    "PatientSex",
    "PatientAge",
    "Modality",
)
#: Kept when present.
EXTRA_KEYS: tuple[str, ...] = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "SOPClassUID",
    "AccessionNumber",
    "BodyPartExamined",
    "SeriesDescription",
    "PatientBirthDate",
)

_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}  # fmt: skip
_DECODE_ERRORS = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
    NotImplementedError, OSError, EOFError, struct.error,
)  # fmt: skip
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def looks_like_dicom(head: bytes) -> bool:
    """True when ``head`` (the first 132+ bytes) is a DICOM file or a preamble-less stream.

    A Part 10 file has ``DICM`` at offset 128. A preamble-less stream starts with a little
    endian tag of group 0x0002 or 0x0008 followed by a valid explicit VR or a plausible
    implicit length.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x1000:
        return False
    if head[4:6] in _VRS:
        return True
    (length,) = struct.unpack("<I", head[4:8])
    return length < 1024


def is_dicom(source: str | Path | bytes) -> bool:
    """True when ``source`` (path or bytes) holds DICOM, judged from its first bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return looks_like_dicom(bytes(source[:132]))
    try:
        with open(source, "rb") as fh:
            return looks_like_dicom(fh.read(132))
    except OSError:
        return False


def _plain(value: Any) -> Any:
    """pydicom values (MultiValue, PersonName, UID, DSfloat, IS) -> plain Python."""
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, MultiValue):
        return [_plain(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def metadata_from_dataset(ds: Any) -> dict[str, Any]:
    """The kept tags of a pydicom ``Dataset`` as plain Python values."""
    meta: dict[str, Any] = {key: _plain(ds.get(key)) for key in META_KEYS}
    for key in EXTRA_KEYS:
        if key in ds:
            meta[key] = _plain(ds.get(key))
    for key in ("PatientID", "PatientSex", "PatientAge", "ViewPosition", "StudyDate"):
        if meta.get(key) == "":
            meta[key] = None
    file_meta = getattr(ds, "file_meta", None)
    tsuid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    meta["TransferSyntaxUID"] = str(tsuid) if tsuid else None
    return meta


def parse_dicom_age(value: str | None) -> float | None:
    """A DICOM Age String (``"045Y"``, ``"006M"``, ``"003W"``, ``"010D"``) -> years, or None."""
    from chextriev.io.fields import normalise_age

    return normalise_age(value)


#: Record fields taken from the DICOM tags, and the tag each comes from (tags win over hints).
TAG_FIELDS: dict[str, str] = {
    "patient_id": "PatientID",
    "study_id": "StudyInstanceUID",
    "view": "ViewPosition",
}
#: ``Record.meta`` keys filled from the tags (normalised), and the tag each comes from.
TAG_META: dict[str, str] = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_date": "StudyDate",
    "sex": "PatientSex",
    "age": "PatientAge",
    "modality": "Modality",
}


def normalised_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """The kept tags (:func:`metadata_from_dataset`, or a QIDO-RS result) as record fields.

    Returns ``{field: value}`` for the present, non-empty ones among :data:`TAG_FIELDS` and
    :data:`TAG_META`; ``sex`` is ``M``/``F``/``O``, ``age`` is years (float).
    """
    from chextriev.io.fields import normalise_age, normalise_sex

    out: dict[str, Any] = {}
    for name, tag in {**TAG_FIELDS, **TAG_META}.items():
        value = tags.get(tag)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or str(value).strip() == "":
            continue
        if name == "sex":
            value = normalise_sex(value)
        elif name == "age":
            value = normalise_age(value)
        else:
            value = str(value).strip()
        if value is not None:
            out[name] = value
    return out


def merge_tags(record: Any, tags: dict[str, Any]) -> Any:
    """Merge DICOM tags into a :class:`~chextriev.records.Record` (in place; returns it).

    The rule, the same for every reader: the tags win over manifest hints for the patient,
    study and view (``patient_id``, ``study_id`` = StudyInstanceUID, ``view`` =
    ViewPosition) and for ``meta`` ``study_instance_uid``, ``series_instance_uid``,
    ``sop_instance_uid``, ``study_date``, ``sex``, ``age``, ``modality``; a hint stays where the
    tag is absent. ``image_id`` becomes the SOPInstanceUID when the reader derived it from the
    file name (``meta["image_id_source"] == "path"``), never when a manifest or dataset named it. ``image_size`` comes from Rows/Columns.
    """
    fields = normalised_tags(tags)
    for name in TAG_FIELDS:
        if name in fields:
            setattr(record, name, fields[name])
    for name in TAG_META:
        if name in fields:
            record.meta[name] = fields[name]
    sop = fields.get("sop_instance_uid")
    if sop and record.meta.get("image_id_source") == "path":
        record.image_id = sop
        record.meta["image_id_source"] = "dataset"
    rows, cols = tags.get("Rows"), tags.get("Columns")
    if rows and cols:
        try:
            record.image_size = (int(rows), int(cols))
        except (TypeError, ValueError):
            pass
    if tags.get("TransferSyntaxUID"):
        record.meta["transfer_syntax"] = str(tags["TransferSyntaxUID"])
    return record


def _dcmread(source: str | Path | bytes, name: str, **kwargs: Any) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        return pydicom.dcmread(fp, force=True, **kwargs)
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, struct.error) as exc:
        raise ImageReadError(name, f"not a readable DICOM file: {exc}") from None


def dicom_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The kept tags without reading the pixel data (``stop_before_pixels``): fast discovery.

    Returns:
        ``{keyword: value}`` with every key of :data:`META_KEYS` (``None`` when absent), the
        present :data:`EXTRA_KEYS` and ``TransferSyntaxUID``.
    """
    name = (
        source
        if not isinstance(source, (bytes, bytearray, memoryview))
        else f"<{len(source)} bytes>"
    )
    ds = _dcmread(source, str(name), stop_before_pixels=True)
    return metadata_from_dataset(ds)


def _ensure_transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax; set from how it was read when the file meta lacks it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    tsuid = ds.file_meta.get("TransferSyntaxUID")
    if tsuid:
        return tsuid
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None:
        implicit, little = True, True
    tsuid = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    ds.file_meta.TransferSyntaxUID = tsuid
    return tsuid


def check_decodable(tsuid: Any, name: str) -> None:
    """Raise :class:`ImageReadError` when no installed decoder handles transfer syntax ``tsuid``."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(tsuid))
    try:
        compressed = uid.is_compressed
    except ValueError:  # not a transfer syntax pydicom knows (private, misspelt, or not one)
        raise ImageReadError(
            name,
            f"unknown transfer syntax UID {str(uid)!r}: not a DICOM transfer syntax this reader "
            "knows, so the pixel data cannot be decoded (ask the sender to transcode it, e.g. to "
            "Explicit VR Little Endian or JPEG Lossless)",
        ) from None
    if not compressed:
        return
    label = f"{uid.name} ({uid})" if uid.is_valid else repr(str(uid))
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):
        raise ImageReadError(
            name, f"transfer syntax {label} is not supported by any pydicom pixel-data decoder"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel-data plugin"
        raise ImageReadError(
            name,
            f"transfer syntax {label} needs a pixel-data plugin that is not installed: {missing} "
            "(e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`)",
        )


def _mask_bits_stored(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Mask bits above ``BitsStored`` (sign-extend signed data); a no-op if already clean."""
    bits = int(ds.get("BitsStored") or 0)
    if not bits or arr.dtype.kind not in "iu" or bits >= arr.dtype.itemsize * 8:
        return arr
    mask = (1 << bits) - 1
    out = arr.astype(np.int64) & mask
    if int(ds.get("PixelRepresentation") or 0) == 1:
        sign = 1 << (bits - 1)
        out = np.where(out & sign, out - (1 << bits), out)
    return out


def window_to_unit(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2) and return values in ``[0, 1]``.

    Args:
        values: modality values, any shape.
        center, width: ``WindowCenter``, ``WindowWidth``.
        function: ``VOILUTFunction``: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.
    """
    x = values.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        if not len(value):
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _apply_voi(values: np.ndarray, ds: Any, name: str) -> np.ndarray | None:
    """VOI LUT or window -> ``[0, 1]``; ``None`` when the file defines neither."""
    seq = ds.get("VOILUTSequence")
    if seq is not None and len(seq) > 0:
        from pydicom.pixels.processing import apply_voi

        item = seq[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        top = float((1 << bits) - 1)
        if out.size and out.max() > top:  # descriptor/data mismatch seen in the wild
            top = float(out.max())
        return np.clip(out / top, 0.0, 1.0)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    if width <= 0:
        log.warning("%s: ignoring invalid WindowWidth %s (min-max instead)", name, width)
        return None
    return window_to_unit(values, center, width, str(ds.get("VOILUTFunction") or "LINEAR"))


def dataset_to_array(ds: Any, name: str = "<dataset>", *, apply_window: bool = True) -> np.ndarray:
    """A pydicom ``Dataset`` with pixel data -> ``(H, W)`` float32 in ``[0, 1]`` (1 = bright).

    Args:
        ds: the dataset (pixel data loaded).
        name: used in error messages.
        apply_window: apply the VOI LUT / window when present (else min-max of modality values).
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if not any(key in ds for key in _PIXEL_KEYWORDS):
        raise ImageReadError(
            name, "DICOM object has no pixel data (e.g. a report or presentation state)"
        )
    tsuid = _ensure_transfer_syntax(ds)
    check_decodable(tsuid, name)
    try:
        arr = ds.pixel_array
    except _DECODE_ERRORS as exc:  # pydicom raises many types for broken pixel data
        raise ImageReadError(name, f"cannot decode pixel data ({tsuid}): {exc}") from None
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if frames > 1:
        log.debug("%s: %d frames, using the first", name, frames)
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        return np.clip(_luma(rgb) / top, 0, 1).astype(np.float32)
    if samples > 1 or arr.ndim == 3:
        bits = int(ds.get("BitsStored") or 8)
        return np.clip(_luma(arr) / float((1 << bits) - 1), 0, 1).astype(np.float32)
    arr = _mask_bits_stored(arr, ds)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    unit = _apply_voi(values, ds, name) if apply_window else None
    if unit is None:
        lo, hi = float(values.min()), float(values.max())
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    shape = str(ds.get("PresentationLUTShape") or "").upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    from chextriev.io.images import to_luminance

    return to_luminance(rgb)


def read_dicom(
    source: str | Path | bytes, *, max_pixels: int | None = None, apply_window: bool = True
):
    """Read a DICOM file (path or bytes) -> :class:`~chextriev.io.images.LoadedImage`.

    ``pixels`` is ``(H, W)`` float32 in ``[0, 1]`` after the display pipeline of this module;
    ``meta`` holds :func:`metadata_from_dataset`; ``format`` is ``"dicom"``.

    Raises:
        ImageReadError: unreadable file, no pixel data, too many pixels, or a transfer
            syntax that no installed plugin decodes.
    """
    from chextriev.io.images import LoadedImage, check_pixel_count, source_name

    name = source_name(source)
    ds = _dcmread(source, name)
    if not any(key in ds for key in _PIXEL_KEYWORDS):
        raise ImageReadError(
            name, "DICOM object has no pixel data (e.g. a report or presentation state)"
        )
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    check_pixel_count(name, cols, rows, max_pixels)
    pixels = dataset_to_array(ds, name, apply_window=apply_window)
    return LoadedImage(pixels=pixels, meta=metadata_from_dataset(ds), format="dicom")
