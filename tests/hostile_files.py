"""Hostile files, each in a real format, written here byte by byte or derived from real files:
decompression bombs, headers that lie about sizes, malformed fields, non-finite pixels.

Used by tests/io, tests/server, tests/indexer, tests/fuzz and benchmarks/request_memory.py
(which puts this folder on ``sys.path``). Every maker returns the file's bytes and costs
little memory to run, however large the file claims to be (bombs are streamed through zlib).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from dicom_files import make_dicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

DEFLATED = DeflatedExplicitVRLittleEndian


def image_dataset(rows: int = 64, columns: int = 64, *, bits: int = 16, frames: int | None = None,
                  pixels: np.ndarray | None = None, **tags) -> Dataset:
    """A frontal DX dataset with file meta (Explicit VR LE) and ``pixels`` (default: a ramp;
    frames stacked on the first axis), built by :func:`dicom_files.make_dicom`."""
    if pixels is None:
        pixels = (np.arange(rows * columns).reshape(rows, columns) % (1 << min(bits, 12)))
    pixels = np.asarray(pixels)
    return make_dicom(pixels.reshape(-1, pixels.shape[-1]), bits_stored=bits, bits_allocated=bits,
                      PatientID="HOSTILE01", Rows=rows, Columns=columns, NumberOfFrames=frames, **tags)


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _meta_bytes(meta: FileMetaDataset) -> bytes:
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


@functools.cache
def deflated_multiframe(frames: int = 16, size: int = 4096) -> bytes:
    """A Deflated Explicit VR LE DICOM of ``frames`` x ``size`` x ``size`` 16-bit zero pixels:
    about 510 kB for the default 512 MiB of pixel data (the issue's 2 GB request)."""
    ds = image_dataset(8, 8, frames=frames)
    ds.Rows = ds.Columns = size
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = frames * size * size * 2
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body.getvalue() + header)]
    zeros = bytes(1 << 22)
    for _ in range(length // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(length % len(zeros))))
    parts.append(compressor.flush())
    meta = ds.file_meta
    meta.TransferSyntaxUID = DEFLATED
    return _meta_bytes(meta) + b"".join(parts)


def deflated_small(size: int = 64) -> bytes:
    """A genuine deflated DICOM of one ``size`` x ``size`` frame (it must still decode)."""
    ds = image_dataset(size, size)
    ds.file_meta.TransferSyntaxUID = DEFLATED
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bundled(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - pydicom ships these
        raise FileNotFoundError(name)
    return Path(path)


def j2k_size_lie(width: int = 60000, height: int = 60000) -> bytes:
    """pydicom's JPEG 2000 lossless MR file with the codestream's SIZ saying ``width`` x
    ``height`` while Rows/Columns stay 64 x 64."""
    data = bytearray(_bundled("MR_small_jp2klossless.dcm").read_bytes())
    at = data.index(b"\xff\x4f\xff\x51")  # SOC, SIZ
    struct.pack_into(">II", data, at + 8, width, height)  # Xsiz, Ysiz (offsets are 0)
    return bytes(data)


def jpeg_sof_lie(width: int = 65000, height: int = 65000) -> bytes:
    """pydicom's JPEG Lossless RGB file with its SOF segment claiming ``width`` x ``height``."""
    data = bytearray(_bundled("SC_rgb_jpeg_gdcm.dcm").read_bytes())
    at = data.index(b"\xff\xc3")  # SOF3 (lossless)
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def float_with_infinity() -> bytes:
    """A 32-bit float DICOM (FloatPixelData) with one infinite pixel."""
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[10, 10] = np.inf
    ds = image_dataset()
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.astype("<f4").tobytes()
    return dicom_bytes(ds)


def unknown_transfer_syntax() -> bytes:
    ds = image_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    return dicom_bytes(ds)


def short_pixel_data(rows: int = 4096, columns: int = 4096) -> bytes:
    """Rows x Columns say ``rows`` x ``columns``; the pixel data holds 64 x 64."""
    ds = image_dataset()
    ds.Rows, ds.Columns = rows, columns
    return dicom_bytes(ds)


def with_fields(**fields) -> bytes:
    """A small DICOM with ``fields`` overriding the image module (e.g. ``Rows=0``)."""
    ds = image_dataset()
    for key, value in fields.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return dicom_bytes(ds)


def raw_number_field(tag: int, vr: bytes, value: bytes) -> bytes:
    """A small DICOM whose element ``tag`` is replaced by raw bytes (e.g. IS ``"-1"``)."""
    ds = image_dataset()
    ds.add_new(tag, vr.decode(), "1")
    data = dicom_bytes(ds)
    group, element = tag >> 16, tag & 0xFFFF
    at = data.index(struct.pack("<HH", group, element), 132)
    (old_length,) = struct.unpack("<H", data[at + 6:at + 8])
    value = value + (b" " if len(value) % 2 else b"")
    return data[:at] + struct.pack("<HH2sH", group, element, vr, len(value)) + value \
        + data[at + 8 + old_length:]


def burned_in(value: str = "YES") -> bytes:
    return dicom_bytes(image_dataset(BurnedInAnnotation=value))


# ------------------------------------------------------------------------------------ PNG, JPEG
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png(width: int, height: int, rows: bytes, *, extra: bytes = b"") -> bytes:
    """An 8-bit grey PNG from raw scanlines (each with its filter byte), any IHDR size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))


def png_huge_ihdr(width: int = 65535, height: int = 65535) -> bytes:
    """A few hundred bytes claiming 65535 x 65535 (4.3 G pixels)."""
    return png(width, height, zlib.compress(b"\0" * 1024))


@functools.cache
def png_idat_bomb(megabytes: int = 200) -> bytes:
    """A 64 x 64 PNG whose IDAT inflates to ``megabytes`` MB of zeros (far past the image)."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    data = b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()
    return png(64, 64, data)


def png_text_bomb(chunks: int = 40, megabytes: int = 16) -> bytes:
    """A small real PNG with ``chunks`` zTXt chunks, each inflating to ``megabytes`` MB."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    text = b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()
    ztxt = _chunk(b"zTXt", b"Comment\0\0" + text)
    rows = zlib.compress(b"".join(b"\0" + bytes(range(64)) for _ in range(64)))
    return png(64, 64, rows, extra=ztxt * chunks)


def jpeg_huge_sof(width: int = 65500, height: int = 65500) -> bytes:
    """A real 32 x 32 JPEG whose SOF0 claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32), 120, np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def normal_png(size: int = 2048) -> bytes:
    """A genuine ``size`` x ``size`` 16-bit grey PNG (the normal request to compare with)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 65535, (size // 16, size // 16), dtype=np.uint16)
    image = np.kron(base, np.ones((16, 16), np.uint16))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def png_at_limit(side: int = 8192) -> bytes:
    """A genuine 8-bit grey PNG of ``side`` x ``side`` (8192: exactly the server's 64 Mpx
    MAX_PIXELS default), a block pattern (a few MB on the wire)."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (side // 64, side // 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.kron(base, np.ones((64, 64), np.uint8))).save(buffer, "PNG")
    return buffer.getvalue()


#: name -> (maker, what a reader must do: "413" refused as too large, "400" refused as unreadable)
HOSTILE = {
    "deflated 16 x 4096 x 4096 frames": (deflated_multiframe, "413"),
    "JPEG 2000 SIZ 60000 x 60000 in a 64 x 64 DICOM": (j2k_size_lie, "413"),
    "JPEG Lossless SOF 65000 x 65000 in a DICOM": (jpeg_sof_lie, "413"),
    "float DICOM with an infinite pixel": (float_with_infinity, "400"),
    "unknown transfer syntax UID": (unknown_transfer_syntax, "400"),
    "pixel data shorter than Rows x Columns": (short_pixel_data, "400"),
    "Rows 0": (lambda: with_fields(Rows=0), "400"),
    "Columns missing": (lambda: with_fields(Columns=None), "400"),
    "NumberOfFrames -1": (lambda: raw_number_field(0x00280008, b"IS", b"-1"), "400"),
    "SamplesPerPixel 7": (lambda: with_fields(SamplesPerPixel=7), "400"),
    "BitsAllocated 13": (lambda: with_fields(BitsAllocated=13), "400"),
    "RescaleSlope infinite": (lambda: raw_number_field(0x00281053, b"DS", b"1e999"), "400"),
    "PNG IHDR 65535 x 65535": (png_huge_ihdr, "413"),
    "JPEG SOF 65500 x 65500": (jpeg_huge_sof, "413"),
}
