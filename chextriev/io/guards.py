"""Limits checked before anything expands: pixel counts, pixel-data sizes, compressed-stream
headers, and inflation that stops at a bound.

Every reader of :mod:`chextriev.io` runs these checks on what a file *announces* before it
decodes (or inflates) what the file *holds*, so that a small hostile file cannot make a reader
allocate far more than its own size:

* :class:`Limits`: ``max_pixels`` (one decoded frame, rows x columns) and ``max_bytes`` (the
  pixel data of all frames as stored uncompressed, frames x rows x columns x samples x bits
  allocated / 8, and the most a deflated DICOM data set may inflate to). ``max_bytes`` defaults
  to :data:`BYTES_PER_PIXEL` x ``max_pixels``.
* :func:`codestream_header`: rows, columns, components and precision of a JPEG (SOF), JPEG-LS
  (SOF55) or JPEG 2000 (SIZ, raw codestream or JP2) frame, read from its marker segments
  without decoding; a DICOM frame whose codestream disagrees with Rows/Columns is refused.
* :func:`rle_segment_count`: the segment count in a DICOM RLE frame header.
* :func:`inflate_bounded`: raw-deflate inflation that stops once the output passes a bound,
  which may be tightened while inflating (a deflated DICOM announces its pixel-data size in
  the first inflated bytes).

All failures raise :class:`~chextriev.errors.ImageReadError` (or its subclass
:class:`~chextriev.errors.ImageTooLargeError` when a limit is passed) naming the source.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from chextriev.errors import ImageReadError, ImageTooLargeError

#: Refuse images with more pixels than this (a 16k x 16k radiograph is 268 M pixels).
DEFAULT_MAX_PIXELS = 300_000_000
#: ``max_bytes`` default per allowed pixel: a 16-bit frame of ``max_pixels`` takes 2 bytes a
#: pixel, so this leaves room for two such frames, or one 8-bit RGB frame plus change.
BYTES_PER_PIXEL = 4
MAX_PIXELS_ENV = "CHEXTRIEV_MAX_PIXELS"
#: How much output :func:`inflate_bounded` produces per step (the bound is checked per step).
INFLATE_STEP = 1 << 20
#: ``announce`` is asked while the output is at most this long (the header comes first).
ANNOUNCE_WITHIN = 4 << 20


@dataclass(frozen=True)
class Limits:
    """``max_pixels``: most pixels of one decoded frame; ``max_bytes``: most bytes of a DICOM's
    pixel data (all frames, as stored uncompressed) and of an inflated DICOM data set."""

    max_pixels: int
    max_bytes: int

    @classmethod
    def resolve(cls, max_pixels: int | None = None, max_bytes: int | None = None) -> Limits:
        """``max_pixels`` (``None``: :func:`max_pixels_default`) and ``max_bytes`` (``None``:
        :data:`BYTES_PER_PIXEL` x ``max_pixels``)."""
        pixels = max_pixels_default() if max_pixels is None else int(max_pixels)
        if pixels <= 0:
            raise ImageReadError("max_pixels", f"must be positive, got {pixels}")
        limit = BYTES_PER_PIXEL * pixels if max_bytes is None else int(max_bytes)
        if limit <= 0:
            raise ImageReadError("max_bytes", f"must be positive, got {limit}")
        return cls(pixels, limit)


def max_pixels_default() -> int:
    """The decompression-bomb limit: ``CHEXTRIEV_MAX_PIXELS`` when set, else the default."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        number = int(value)
    except ValueError:
        raise ImageReadError(MAX_PIXELS_ENV, f"not an integer: {value!r}") from None
    if number <= 0:
        raise ImageReadError(MAX_PIXELS_ENV, f"must be positive, got {number}")
    return number


def check_pixel_count(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Raise :class:`ImageReadError` for a zero or negative size and
    :class:`ImageTooLargeError` when ``width * height`` exceeds ``max_pixels``."""
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height}")
    if width * height > limit:
        raise ImageTooLargeError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(possible decompression bomb; raise max_pixels or CHEXTRIEV_MAX_PIXELS if genuine)",
        )


def check_bytes(name: str, nbytes: int, max_bytes: int, what: str) -> None:
    """Raise :class:`ImageTooLargeError` when ``what`` (``nbytes`` long) exceeds ``max_bytes``."""
    if nbytes > max_bytes:
        raise ImageTooLargeError(
            name, f"{what} = {nbytes} bytes exceeds the limit of {max_bytes} bytes "
                  "(possible decompression bomb)")


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """An exception's message for an error reason (decoders' messages can be long: cut at
    ``limit`` characters)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- codestream headers
@dataclass(frozen=True)
class CodestreamHeader:
    """What a compressed frame's own header says: ``kind`` (``jpeg``, ``jpeg-ls``,
    ``jpeg2000``), ``height``, ``width``, ``components`` and ``precision`` (bits)."""

    kind: str
    height: int
    width: int
    components: int
    precision: int


#: JPEG start-of-frame markers (SOF0..SOF15 without DHT C4, JPG C8 and DAC CC), and JPEG-LS SOF55.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_LS_SOF = 0xF7
#: Markers without a length field: TEM, RST0..RST7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_header(data: bytes) -> CodestreamHeader | None:
    """The SOF (or SOF55) segment of a JPEG / JPEG-LS stream, or ``None`` when there is none
    before the first scan (or the stream ends first)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    offset, end = 2, len(data)
    while offset + 4 <= end:
        if data[offset] != 0xFF:
            return None  # garbage between segments
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF or marker == _JPEG_LS_SOF:
            segment = data[offset + 4:offset + 2 + length]
            if len(segment) < 6:
                return None
            precision = segment[0]
            height, width = struct.unpack(">HH", segment[1:5])
            kind = "jpeg-ls" if marker == _JPEG_LS_SOF else "jpeg"
            return CodestreamHeader(kind, height, width, segment[5], precision)
        if marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            return None
        offset += 2 + length
    return None


def _j2k_header(data: bytes) -> CodestreamHeader | None:
    """The SIZ segment of a JPEG 2000 codestream (raw, or inside a JP2 file's ``jp2c`` box)."""
    offset = 0
    if data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):  # JP2 signature box
        offset, end = 12, len(data)
        while offset + 8 <= end:
            (length,) = struct.unpack(">I", data[offset:offset + 4])
            box = data[offset + 4:offset + 8]
            header = 8
            if length == 1 and offset + 16 <= end:  # 64-bit box length
                (length,) = struct.unpack(">Q", data[offset + 8:offset + 16])
                header = 16
            if box == b"jp2c":
                offset += header
                break
            if length < header:  # 0 = "to the end": no codestream box follows
                return None
            offset += length
        else:
            return None
    if data[offset:offset + 4] != b"\xff\x4f\xff\x51":  # SOC, then SIZ (required second)
        return None
    siz = data[offset + 4:offset + 4 + 40]
    if len(siz) < 40:
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack(">HHIIII", siz[:20])
    (csiz,) = struct.unpack(">H", siz[36:38])
    ssiz = siz[38]
    return CodestreamHeader("jpeg2000", max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), csiz,
                            (ssiz & 0x7F) + 1)


def codestream_header(data: bytes) -> CodestreamHeader | None:
    """Rows, columns, components and precision of a JPEG, JPEG-LS or JPEG 2000 frame from its
    marker segments (nothing decoded), or ``None`` when ``data`` is neither."""
    return _jpeg_header(data) or _j2k_header(data)


def rle_segment_count(frame: bytes) -> int | None:
    """The number of segments in a DICOM RLE frame's 64-byte header (PS3.5 G.3), or ``None``
    when the header is missing or names more than 15 segments or offsets outside the frame."""
    if len(frame) < 64:
        return None
    values = struct.unpack("<16I", frame[:64])
    count = values[0]
    if not 1 <= count <= 15:
        return None
    offsets = values[1:1 + count]
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)) \
            or offsets[-1] >= len(frame):
        return None
    return count


# --------------------------------------------------------------------------- bounded inflation
def inflate_bounded(data: bytes, limit: int, name: str, *, wbits: int = -zlib.MAX_WBITS,
                    announce: Callable[[bytes], int | None] | None = None,
                    what: str = "the deflated data") -> bytes:
    """Inflate ``data`` but never past ``limit`` bytes of output.

    ``announce(inflated_so_far)`` (optional) is called after each step, while the output is
    at most :data:`ANNOUNCE_WITHIN` bytes, until it returns a number: the size the data says it will inflate to, which then becomes the bound (at most
    ``limit``). Raises :class:`ImageTooLargeError` when the output would pass the bound and
    :class:`ImageReadError` for a corrupt stream.
    """
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    bound = limit
    pending = data
    try:
        while True:
            step = min(INFLATE_STEP, bound + 1 - len(out))
            chunk = inflater.decompress(pending, max(step, 1))
            out += chunk
            pending = inflater.unconsumed_tail
            if len(out) > bound:
                raise ImageTooLargeError(
                    name, f"{what} inflates beyond {bound} bytes "
                          f"({'what its header announces' if bound < limit else 'the limit'}; "
                          "possible decompression bomb)")
            if announce is not None and len(out) > ANNOUNCE_WITHIN:
                announce = None  # the header was not found early: the fixed limit stays
            if announce is not None:
                announced = announce(bytes(out))
                if announced is not None:
                    announce = None
                    if announced > limit:
                        raise ImageTooLargeError(
                            name, f"{what} announces {announced} bytes, above the limit of "
                                  f"{limit} bytes (possible decompression bomb)")
                    bound = max(announced, len(out))
            if inflater.eof or (not pending and not chunk):
                break
        out += inflater.flush()
    except zlib.error as error:
        raise ImageReadError(name, f"{what} is corrupt: {error}") from None
    if len(out) > bound:
        raise ImageTooLargeError(name, f"{what} inflates beyond {bound} bytes")
    return bytes(out)
