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
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import ImageReadError
from chextriev.io.guards import (
    Limits,
    check_bytes,
    check_pixel_count,
    codestream_header,
    inflate_bounded,
    rle_segment_count,
    short_reason,
)
from chextriev.io.loaded import LoadedImage, source_name, to_luminance

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
    "BurnedInAnnotation",
)
#: The longest text kept from a tag (a hostile file may put megabytes in one).
MAX_TAG_TEXT = 1024

_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}  # fmt: skip
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
    """pydicom values (MultiValue, PersonName, UID, DSfloat, IS) -> plain Python; a sequence
    (where a hostile file puts one in a text tag) -> ``None``; text cut at
    :data:`MAX_TAG_TEXT` characters."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if value is None or isinstance(value, Sequence):
        return None
    if isinstance(value, MultiValue):
        return [_plain(v) for v in list(value)[:16]]
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value)[:MAX_TAG_TEXT]


def _tag(ds: Any, key: str) -> Any:
    """``ds.get(key)`` as plain Python; ``None`` when the value cannot be converted."""
    try:
        return _plain(ds.get(key))
    except Exception:  # pydicom converts raw values on access; bad ones raise
        log.debug("tag %s unreadable", key, exc_info=True)
        return None


def metadata_from_dataset(ds: Any) -> dict[str, Any]:
    """The kept tags of a pydicom ``Dataset`` as plain Python values."""
    meta: dict[str, Any] = {key: _tag(ds, key) for key in META_KEYS}
    for key in EXTRA_KEYS:
        if key in ds:
            meta[key] = _tag(ds, key)
    for key in ("PatientID", "PatientSex", "PatientAge", "ViewPosition", "StudyDate"):
        if meta.get(key) == "":
            meta[key] = None
    file_meta = getattr(ds, "file_meta", None)
    tsuid = _tag(file_meta, "TransferSyntaxUID") if file_meta is not None else None
    meta["TransferSyntaxUID"] = getattr(ds, "deflated_from", None) or (str(tsuid) if tsuid else None)
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


#: Deflated Explicit VR Little Endian: the whole data set after the file meta is deflated.
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
#: Bytes allowed after the pixel data of an inflated data set (trailing elements, padding).
DEFLATE_SLACK = 1 << 20
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def _read_bytes(source: str | Path | bytes, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot open: {exc}") from None


def _head_bytes(source: str | Path | bytes, n: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:n])
    try:
        with open(source, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""  # pydicom reports the reason


def _announced_pixel_bytes(body: bytes, name: str, limits: Limits) -> int | None:
    """For an inflated (Explicit VR Little Endian) data set's first bytes: ``len(body) +`` the
    pixel-data bytes its header announces ``+`` :data:`DEFLATE_SLACK`, checked against the
    limits; ``None`` while the pixel-data element has not been reached."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    reached: list[bool] = []

    def at_pixels(tag, _vr, _length) -> bool:
        if int(tag) in _PIXEL_TAGS:
            reached.append(True)
            return True
        return False

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(DicomBytesIO(body), is_implicit_VR=False, is_little_endian=True,
                              stop_when=at_pixels)
    except Exception:  # noqa: BLE001 - a cut element: not reached yet (or broken: inflate on)
        return None
    if not reached:
        return None
    geometry = pixel_geometry(ds, name, limits, keyword=None)
    return len(body) + geometry.expected_bytes + DEFLATE_SLACK


def _inflated(data: bytes, name: str, limits: Limits) -> bytes | None:
    """A deflated Part 10 file rewritten as Explicit VR Little Endian, inflated within the
    limits (the pixel-data size its header announces, at most ``limits.max_bytes``); ``None``
    when ``data`` is not deflated."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    fp = DicomBytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preamble = read_preamble(fp, True)
            meta = FileMetaDataset(read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True,
                stop_when=lambda tag, _vr, _length: int(tag) >> 16 != 2))
            syntax = str(meta.get("TransferSyntaxUID") or "").strip("\0 ")
    except Exception:  # noqa: BLE001 - not a readable file meta: pydicom will say why
        return None
    if syntax != DEFLATED_TS:
        return None
    start = fp.tell()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(preamble or b"\0" * 128)
    head.write(b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = inflate_bounded(data[start:], limits.max_bytes + DEFLATE_SLACK, name,
                           announce=lambda out: _announced_pixel_bytes(out, name, limits),
                           what="the deflated data set")
    return head.getvalue() + body


def _dcmread(source: str | Path | bytes, name: str, *, limits: Limits | None = None,
             **kwargs: Any) -> Any:
    """``pydicom.dcmread`` (force) of a path or bytes, with a deflated data set inflated within
    ``limits`` first; any failure is :class:`ImageReadError`."""
    import pydicom

    limits = limits or Limits.resolve()
    deflated = DEFLATED_TS.encode() in _head_bytes(source, 8192)
    fp: Any = source
    rewritten = None
    if deflated:
        rewritten = _inflated(_read_bytes(source, name), name, limits)
        fp = io.BytesIO(rewritten) if rewritten is not None else io.BytesIO(_read_bytes(source, name))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of a bad file
            ds = pydicom.dcmread(fp, force=True, **kwargs)
    except FileNotFoundError:
        raise ImageReadError(name, "file not found") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise ImageReadError(name, f"not a readable DICOM file: {short_reason(exc)}") from None
    if deflated and isinstance(fp, io.BytesIO) and rewritten is not None:
        ds.deflated_from = DEFLATED_TS  # what the file said (it is read inflated)
    return ds


def dicom_metadata(source: str | Path | bytes, *, max_pixels: int | None = None,
                   max_bytes: int | None = None) -> dict[str, Any]:
    """The kept tags without reading the pixel data (``stop_before_pixels``): fast discovery
    (a deflated data set is inflated within the limits of :mod:`.guards` all the same).

    Returns:
        ``{keyword: value}`` with every key of :data:`META_KEYS` (``None`` when absent), the
        present :data:`EXTRA_KEYS` and ``TransferSyntaxUID``.
    """
    name = (
        source
        if not isinstance(source, (bytes, bytearray, memoryview))
        else f"<{len(source)} bytes>"
    )
    ds = _dcmread(source, str(name), limits=Limits.resolve(max_pixels, max_bytes),
                  stop_before_pixels=True)
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


@dataclass(frozen=True)
class PixelGeometry:
    """What a DICOM's image pixel module announces: ``keyword`` (``PixelData``,
    ``FloatPixelData`` or ``DoubleFloatPixelData``), ``rows``, ``columns``, ``frames``,
    ``samples`` (per pixel), ``bits_allocated`` and ``expected_bytes`` (all frames, stored
    uncompressed)."""

    keyword: str | None
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    expected_bytes: int


def _int_tag(ds: Any, key: str, name: str, default: int | None = None) -> int | None:
    """An integer tag (US, IS, ...) of ``ds``; ``default`` when absent or empty; an
    :class:`ImageReadError` naming the tag when it holds something else."""
    try:
        value = ds.get(key)
    except Exception:  # noqa: BLE001 - a raw value that does not convert
        raise ImageReadError(name, f"{key} is not readable") from None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) != 1:
            raise ImageReadError(name, f"{key} must hold one number, got {len(value)} values")
        value = value[0]
    try:
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(name, f"{key} is not an integer: {str(value)[:40]!r}") from None


def pixel_geometry(ds: Any, name: str, limits: Limits | None = None, *,
                   keyword: str | None = "auto") -> PixelGeometry:
    """Check what ``ds`` announces before any pixel is decoded: Rows and Columns positive and
    one frame within ``limits.max_pixels``; NumberOfFrames, SamplesPerPixel (1 or 3),
    BitsAllocated (1, 8, 16, 32, 64) and BitsStored sane; and frames x rows x columns x samples
    x bits allocated / 8 within ``limits.max_bytes``.

    Raises:
        ImageTooLargeError: above a limit.
        ImageReadError: a missing, zero, negative or malformed field.
    """
    limits = limits or Limits.resolve()
    if keyword == "auto":
        keyword = next((key for key in _PIXEL_KEYWORDS if key in ds), None)
    rows, columns = _int_tag(ds, "Rows", name), _int_tag(ds, "Columns", name)
    if rows is None or columns is None:
        raise ImageReadError(name, "DICOM image without Rows/Columns")
    check_pixel_count(name, columns, rows, limits.max_pixels)
    frames = _int_tag(ds, "NumberOfFrames", name, 1)
    if frames < 0:
        raise ImageReadError(name, f"invalid NumberOfFrames {frames}")
    frames = max(frames, 1)  # 0 is written by some modalities for a single frame
    samples = _int_tag(ds, "SamplesPerPixel", name, 1)
    if samples not in (1, 3):
        raise ImageReadError(name, f"SamplesPerPixel {samples} is not supported (1 or 3)")
    bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword or "")
    bits = bits or _int_tag(ds, "BitsAllocated", name, None)
    if bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(name, f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64")
    stored = _int_tag(ds, "BitsStored", name, bits)
    if not 1 <= stored <= bits:
        raise ImageReadError(name, f"BitsStored {stored} is not within 1..BitsAllocated ({bits})")
    expected = (frames * rows * columns * samples * bits + 7) // 8
    photometric = str(_tag(ds, "PhotometricInterpretation") or "").strip().upper()
    needed = PHOTOMETRIC_SAMPLES.get(photometric or "MONOCHROME2")
    if needed is None:
        raise ImageReadError(name, f"unknown PhotometricInterpretation {photometric[:32]!r}; known: "
                                   f"{', '.join(PHOTOMETRIC_SAMPLES)}")
    if needed != samples:  # decoders trust one or the other (GDCM aborts the process on this)
        raise ImageReadError(name, f"inconsistent: PhotometricInterpretation {photometric} has "
                                   f"{needed} sample(s) per pixel, SamplesPerPixel says {samples}")
    if samples == 3 and photometric == "YBR_FULL_422":
        expected = expected * 2 // 3
    check_bytes(name, expected, limits.max_bytes,
                f"the pixel data ({frames} frame(s) x {rows} x {columns} x {samples} sample(s) "
                f"x {bits} bits)")
    return PixelGeometry(keyword, rows, columns, frames, samples, bits, expected)


#: Samples per pixel of each PhotometricInterpretation (PS3.3 C.7.6.3.1.2).
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3,
                       "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3,
                       "YBR_RCT": 3, "XYB": 3}
#: The pixel-data plugins tried first, in this order, when several can decode a syntax: the
#: Python-wrapped decoders before GDCM, whose C++ exceptions on inconsistent input abort the
#: whole process instead of raising (GDCM stays the decoder of JPEG Lossless, its only one).
PLUGIN_PREFERENCE = ("pydicom", "pylibjpeg", "pyjpegls", "pillow", "gdcm")
#: Syntaxes only GDCM decodes here (JPEG Lossless): their headers are checked the strictest.
GDCM_ONLY = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")


def decoding_plugin(tsuid: Any) -> str:
    """The pixel-data plugin to decode ``tsuid`` with (:data:`PLUGIN_PREFERENCE`); ``""`` lets
    pydicom choose (uncompressed data, or no plugin reported)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(str(tsuid))
    if not uid.is_compressed:
        return ""
    try:
        available = get_decoder(uid).available_plugins
    except (NotImplementedError, ValueError):
        return ""
    return next((plugin for plugin in PLUGIN_PREFERENCE if plugin in available), "")


def check_pixel_data(ds: Any, geometry: PixelGeometry, tsuid: Any, name: str,
                     limits: Limits) -> None:
    """Check the pixel data against what the header announces, before decoding: native data
    at least as long as announced; for compressed syntaxes the first frame's own header (JPEG
    SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE segment table) consistent with Rows, Columns and
    SamplesPerPixel and within ``limits.max_pixels``. Only the first frame is decoded."""
    from pydicom.uid import (
        UID,
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
        RLELossless,
    )

    uid = UID(str(tsuid))
    value = ds.get(geometry.keyword)
    data = value.value if hasattr(value, "value") else value
    if not isinstance(data, (bytes, bytearray)):
        raise ImageReadError(name, f"{geometry.keyword} holds no bytes")
    if not uid.is_encapsulated:
        if len(data) < geometry.expected_bytes:
            raise ImageReadError(
                name, f"inconsistent pixel data: {len(data)} bytes, but {geometry.frames} "
                      f"frame(s) of {geometry.rows} x {geometry.columns} x {geometry.samples} "
                      f"sample(s) x {geometry.bits_allocated} bits need "
                      f"{geometry.expected_bytes}")
        return
    from pydicom.encaps import get_frame

    try:
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        frame = get_frame(bytes(data), 0, number_of_frames=geometry.frames,
                          extended_offsets=extended)
    except Exception as exc:  # noqa: BLE001 - a broken item structure
        raise ImageReadError(name, f"encapsulated pixel data unreadable: {short_reason(exc)}") from None
    if uid == RLELossless:
        segments = rle_segment_count(frame)
        needed = geometry.samples * max(geometry.bits_allocated // 8, 1)
        if segments is None:
            raise ImageReadError(name, "the first RLE frame has no valid segment table")
        if segments != needed:
            raise ImageReadError(name, f"inconsistent RLE frame: {segments} segment(s), but "
                                       f"{geometry.samples} sample(s) of "
                                       f"{geometry.bits_allocated} bits need {needed}")
        return
    families = {"JPEG": JPEGTransferSyntaxes, "JPEG-LS": JPEGLSTransferSyntaxes,
                "JPEG 2000": JPEG2000TransferSyntaxes}
    family = next((label for label, uids in families.items() if uid in uids), None)
    header = codestream_header(frame)
    if header is None:
        if family is not None:
            raise ImageReadError(name, f"the first frame is not a {family} codestream "
                                       "(no frame header marker)")
        return  # another encapsulated syntax: its decoder checks what it reads
    check_pixel_count(name, header.width, header.height, limits.max_pixels)
    stored = _int_tag(ds, "BitsStored", name, geometry.bits_allocated)
    if family == "JPEG" and header.precision != stored and uid in GDCM_ONLY:
        raise ImageReadError(name, f"inconsistent headers: the JPEG codestream has {header.precision}-bit "
                                   f"samples but BitsStored says {stored}")
    if (header.height, header.width) != (geometry.rows, geometry.columns) \
            or header.components != geometry.samples:
        raise ImageReadError(
            name, f"inconsistent headers: the first frame's {header.kind} codestream is "
                  f"{header.width}x{header.height} with {header.components} component(s), but "
                  f"Columns x Rows say {geometry.columns}x{geometry.rows} with "
                  f"{geometry.samples} sample(s)")


def _mask_bits_stored(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Mask bits above ``BitsStored`` (sign-extend signed data); a no-op if already clean.
    Unsigned data stays in its dtype; signed data widens to 32 bits (64 for 32-bit data)."""
    bits = int(ds.get("BitsStored") or 0)
    if not bits or arr.dtype.kind not in "iu" or bits >= arr.dtype.itemsize * 8:
        return arr
    mask = (1 << bits) - 1
    if arr.dtype.kind == "u":
        return np.bitwise_and(arr, arr.dtype.type(mask))
    wide = np.int64 if arr.dtype.itemsize >= 4 else np.int32
    out = arr.astype(wide) & mask
    if int(ds.get("PixelRepresentation") or 0) == 1:
        out[(out & (1 << (bits - 1))) != 0] -= 1 << bits
    return out


def _window_in_place(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The window of :func:`window_to_unit` computed in ``x`` (float32) itself."""
    function = (function or "LINEAR").upper()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if function == "SIGMOID":
            x -= np.float32(center)
            x *= np.float32(-4.0 / width)
            np.exp(x, out=x)
            x += np.float32(1.0)
            return np.reciprocal(x, out=x)
        if function == "LINEAR_EXACT":
            x -= np.float32(center)
            x *= np.float32(1.0 / width)
            x += np.float32(0.5)
            return np.clip(x, 0.0, 1.0, out=x)
        if width <= 1:
            return (x > np.float32(center - 0.5)).astype(np.float32)
        x -= np.float32(center - 0.5)
        x *= np.float32(1.0 / (width - 1))
        x += np.float32(0.5)
        return np.clip(x, 0.0, 1.0, out=x)


def window_to_unit(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2) and return values in ``[0, 1]`` (float32).

    Args:
        values: modality values, any shape (not modified).
        center, width: ``WindowCenter``, ``WindowWidth``.
        function: ``VOILUTFunction``: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.
    """
    return _window_in_place(np.array(values, dtype=np.float32), center, width, function)


def _first(value: Any) -> float | None:
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        if not len(value):
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _apply_voi(values: np.ndarray, ds: Any, name: str) -> np.ndarray | None:
    """VOI LUT or window -> ``[0, 1]`` (``values``, float32, is reused); ``None`` when the
    file defines neither, or only a malformed one (then min-max)."""
    seq = ds.get("VOILUTSequence")
    if seq is not None and len(seq) > 0:
        from pydicom.pixels.processing import apply_voi

        item = seq[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        indices = np.clip(np.rint(values), -(2**31), 2**31 - 1).astype(np.int32)
        out = np.asarray(apply_voi(indices, ds, index=0), dtype=np.float32)
        top = float((1 << bits) - 1)
        if out.size and out.max() > top:  # descriptor/data mismatch seen in the wild
            top = float(out.max())
        return np.clip(out / np.float32(top), 0.0, 1.0)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    if width <= 0:
        log.warning("%s: ignoring invalid WindowWidth %s (min-max instead)", name, width)
        return None
    return _window_in_place(values, center, width, str(ds.get("VOILUTFunction") or "LINEAR"))


def _modality_values(arr: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """Stored values -> modality values, float32 (a Modality LUT Sequence, else
    ``RescaleSlope`` x value + ``RescaleIntercept``). Non-finite results raise."""
    seq = ds.get("ModalityLUTSequence")
    if seq is not None and len(seq) > 0:
        from pydicom.pixels import apply_modality_lut

        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        slope_value = 1.0 if slope in (None, "") else _first(slope)
        intercept_value = 0.0 if intercept in (None, "") else _first(intercept)
        if slope_value is None or intercept_value is None:
            raise ImageReadError(name, "RescaleSlope/RescaleIntercept are not finite numbers")
        values = arr.astype(np.float32)  # a copy: the stored values are not touched
        with np.errstate(over="ignore", invalid="ignore"):
            if slope_value != 1.0:
                values *= np.float32(slope_value)
            if intercept_value != 0.0:
                values += np.float32(intercept_value)
    bad = values.size - int(np.isfinite(values).sum())
    if bad:
        raise ImageReadError(name, f"{bad} pixel value(s) are not finite (NaN or infinity)")
    return values


def dataset_to_array(ds: Any, name: str = "<dataset>", *, apply_window: bool = True,
                     limits: Limits | None = None) -> np.ndarray:
    """A pydicom ``Dataset`` with pixel data -> ``(H, W)`` float32 in ``[0, 1]`` (1 = bright).

    What the header announces is checked first (:func:`pixel_geometry`,
    :func:`check_pixel_data`, within ``limits``); only the first frame is decoded.

    Args:
        ds: the dataset (pixel data loaded).
        name: used in error messages.
        apply_window: apply the VOI LUT / window when present (else min-max of modality values).
        limits: pixel and byte limits (``None``: the defaults of :mod:`.guards`).
    """
    from pydicom.pixels import apply_color_lut

    limits = limits or Limits.resolve()
    if not any(key in ds for key in _PIXEL_KEYWORDS):
        raise ImageReadError(
            name, "DICOM object has no pixel data (e.g. a report or presentation state)"
        )
    tsuid = _ensure_transfer_syntax(ds)
    check_decodable(tsuid, name)
    geometry = pixel_geometry(ds, name, limits)
    check_pixel_data(ds, geometry, tsuid, name, limits)
    try:
        ds.pixel_array_options(index=0, decoding_plugin=decoding_plugin(tsuid))  # frame 1 only
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom and its plugins raise many types
        raise ImageReadError(name, f"cannot decode pixel data ({tsuid}): {short_reason(exc)}") from None
    if arr.ndim == 3 and geometry.samples == 1 and geometry.frames > 1:
        arr = arr[0]  # a decoder that ignored the frame index
    photometric = str(_tag(ds, "PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        return np.clip(_luma(rgb) / np.float32(top), 0, 1).astype(np.float32)
    if geometry.samples > 1 or arr.ndim == 3:
        bits = int(ds.get("BitsStored") or 8)
        return np.clip(_luma(arr) / np.float32((1 << bits) - 1), 0, 1).astype(np.float32)
    arr = _mask_bits_stored(arr, ds)
    values = _modality_values(arr, ds, name)
    del arr
    unit = _apply_voi(values, ds, name) if apply_window else None
    if unit is None:
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            values -= np.float32(lo)
            values *= np.float32(1.0 / (hi - lo))
            unit = values
        else:
            unit = np.zeros_like(values)
    shape = str(_tag(ds, "PresentationLUTShape") or "").upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        np.subtract(np.float32(1.0), unit, out=unit)
    return np.clip(unit, 0.0, 1.0, out=unit)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return to_luminance(rgb)


def read_dicom(source: str | Path | bytes, *, max_pixels: int | None = None,
               max_bytes: int | None = None, apply_window: bool = True):
    """Read a DICOM file (path or bytes) -> :class:`~chextriev.io.loaded.LoadedImage`.

    ``pixels`` is ``(H, W)`` float32 in ``[0, 1]`` after the display pipeline of this module;
    ``meta`` holds :func:`metadata_from_dataset`; ``format`` is ``"dicom"``. Everything the
    file announces is checked against the limits (:mod:`.guards`) before it is inflated or
    decoded.

    Raises:
        ImageTooLargeError: more pixels or pixel-data bytes than the limits.
        ImageReadError: unreadable file, no pixel data, malformed or inconsistent image
            fields, non-finite values, or a transfer syntax that no installed plugin decodes.
    """
    limits = Limits.resolve(max_pixels, max_bytes)
    name = source_name(source)
    ds = _dcmread(source, name, limits=limits)
    pixels = dataset_to_array(ds, name, apply_window=apply_window, limits=limits)
    return LoadedImage(pixels=pixels, meta=metadata_from_dataset(ds), format="dicom")
