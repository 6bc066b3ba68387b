"""One normalised image array whatever the source: PNG, JPEG or DICOM.

The format is detected from the content (magic bytes), never from the file name:

* PNG: ``\\x89PNG\\r\\n\\x1a\\n``; modes ``1``, ``L``, ``I;16`` (16-bit), ``I``, ``LA``, ``P``,
  ``RGB``, ``RGBA`` (colour is converted to luminance, alpha is ignored);
* JPEG: ``\\xff\\xd8\\xff`` (grey, RGB, CMYK; EXIF orientation applied);
* DICOM: ``DICM`` at offset 128, or a preamble-less DICOM stream (see :mod:`.dicom`).

Every loader returns ``np.ndarray`` float32 of shape ``(H, W)`` with values in ``[0, 1]``,
1 = bright (dense), every value finite. Any input either decodes to that or raises
:class:`~chextriev.errors.ImageReadError` naming the source and the reason (a hostile file
included: decoder failures of any type become this error). Before anything is decoded, the
header is checked against the limits of :mod:`.guards` (``max_pixels`` per frame, default
:data:`DEFAULT_MAX_PIXELS` or ``CHEXTRIEV_MAX_PIXELS``; ``max_bytes`` of DICOM pixel data):
above them :class:`~chextriev.errors.ImageTooLargeError`.

Example::

    >>> from chextriev.io.images import load_image
    >>> x = load_image("images/00000075_000.png")   # doctest: +SKIP
    >>> x.shape, x.dtype                            # doctest: +SKIP
    ((512, 512), dtype('float32'))
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chextriev.errors import ImageReadError, ImageTooLargeError
from chextriev.io.guards import (  # noqa: F401 - re-exported: the readers' limits live there
    DEFAULT_MAX_PIXELS,
    Limits,
    check_pixel_count,
    max_pixels_default,
    short_reason,
)
from chextriev.io.loaded import LoadedImage, Source, source_name, to_luminance

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
def _head(source: Source, n: int = 132) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:n])
    try:
        with open(source, "rb") as fh:
            return fh.read(n)
    except FileNotFoundError:
        raise ImageReadError(str(source), "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(str(source), "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(str(source), f"cannot open: {exc}") from None


def detect_format(source: Source) -> str | None:
    """``"png"``, ``"jpeg"``, ``"dicom"`` from the first bytes of ``source``, else ``None``."""
    from chextriev.io.dicom import looks_like_dicom

    head = _head(source)
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if looks_like_dicom(head):
        return "dicom"
    return None


def _open_stream(source: Source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return open(source, "rb")


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A Pillow image in any common mode -> ``(H, W)`` float32 in ``[0, 1]``.

    ``L``/``P``/``1`` are scaled by 255, 16-bit modes (``I;16*``, ``I``) by 65535, ``F`` by its
    min-max; ``LA`` keeps its grey band; ``RGB``/``RGBA``/``CMYK``/``YCbCr`` become luminance.
    Works in place on one float32 array (4 bytes a pixel beside Pillow's own buffer).
    """
    mode = img.mode
    if mode == "1":
        arr = np.asarray(img, dtype=np.float32)
    elif mode == "L":
        arr = _scaled(np.asarray(img, dtype=np.float32), 255.0)
    elif mode == "LA":
        arr = _scaled(np.asarray(img.getchannel("L"), dtype=np.float32), 255.0)
    elif mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img)
        if mode == "I" and raw.size and (raw.min() < 0 or raw.max() > 65535):
            arr = _minmax(raw.astype(np.float32))
        else:
            arr = _scaled(raw.astype(np.float32), 65535.0)
    elif mode == "F":
        arr = _minmax(np.asarray(img, dtype=np.float32))
    elif mode in ("RGB", "RGBA", "RGBX"):
        arr = _scaled(to_luminance(np.asarray(img)), 255.0)
    else:  # P, PA, CMYK, YCbCr, LAB, HSV ...
        arr = _scaled(to_luminance(np.asarray(img.convert("RGB"))), 255.0)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return np.clip(arr, 0.0, 1.0, out=arr if arr.flags.writeable else None)


def _scaled(arr: np.ndarray, top: float) -> np.ndarray:
    if not arr.flags.writeable:
        arr = arr.copy()
    arr *= np.float32(1.0 / top)
    return arr


def _minmax(arr: np.ndarray) -> np.ndarray:
    """``arr`` scaled to ``[0, 1]`` by its finite minimum and maximum (in place when it can)."""
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{int(arr.size - finite.sum())} pixel value(s) are not finite "
                         "(NaN or infinity)")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    out = arr.astype(np.float32, copy=not arr.flags.writeable or arr.dtype != np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


#: Pillow plugins allowed to open each format (no other plugin is ever tried on a file).
_PIL_FORMATS = {"png": ("PNG",), "jpeg": ("JPEG",)}  # JPEG opens multi-picture (MPO) files too


def _read_raster(source: Source, fmt: str, limits: Limits) -> LoadedImage:
    """PNG / JPEG through Pillow. The header (PNG IHDR, JPEG SOF) is read by ``Image.open``
    and checked before any pixel is decoded; PNG zlib data inflates into a buffer of the
    IHDR's size only, and text/ICC chunks within Pillow's ``MAX_TEXT_CHUNK`` (each) and
    ``MAX_TEXT_MEMORY`` (all) bounds."""
    name = source_name(source)
    try:
        with _open_stream(source) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh, formats=_PIL_FORMATS[fmt])
            check_pixel_count(name, img.width, img.height, limits.max_pixels)
            img.load()
            if fmt == "jpeg":
                img = ImageOps.exif_transpose(img)
            meta = {"mode": img.mode, "width": img.width, "height": img.height}
            pixels = pil_to_array(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"decompression bomb refused by Pillow: {exc}") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, f"not a decodable {fmt.upper()} file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(name, f"corrupt or truncated {fmt.upper()}: {short_reason(exc)}") from None
    return LoadedImage(pixels=pixels, meta=meta, format=fmt)


def checked_pixels(pixels: Any, name: str) -> np.ndarray:
    """The reader contract: ``pixels`` as a C-contiguous ``(H, W)`` float32 array in
    ``[0, 1]`` with no NaN or infinity; anything else raises :class:`ImageReadError`."""
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(name, f"decoded to an array of shape {arr.shape}, not one 2-D image")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "pixel values are not finite (NaN or infinity)")
    if arr.min() < 0.0 or arr.max() > 1.0:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def read_image(source: Source, *, max_pixels: int | None = None,
               max_bytes: int | None = None) -> LoadedImage:
    """Decode ``source`` (path or bytes) into a :class:`LoadedImage`.

    Args:
        source: a path, or the file's bytes.
        max_pixels: decompression-bomb limit on one decoded frame (``None``:
            :func:`max_pixels_default`).
        max_bytes: limit on a DICOM's pixel data (all frames, uncompressed) and on an
            inflated DICOM data set (``None``: 4 x ``max_pixels``; see :mod:`.guards`).

    Returns:
        ``LoadedImage`` with ``pixels`` ``(H, W)`` float32 in ``[0, 1]``, all finite.

    Raises:
        ImageTooLargeError: the header announces more than the limits (nothing decoded).
        ImageReadError: unknown format, missing file, corrupt/truncated data, inconsistent
            headers, non-finite pixel values, DICOM without pixel data or with a transfer
            syntax no installed plugin decodes, or any decoder failure: every input either
            decodes or raises this (a ``MemoryError`` alone passes through).
    """
    limits = Limits.resolve(max_pixels, max_bytes)
    name = source_name(source)
    try:
        loaded = _read(source, limits)
        loaded.pixels = checked_pixels(loaded.pixels, name)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # decoders raise anything on hostile input
        log.debug("%s: decoder failure", name, exc_info=True)
        raise ImageReadError(name, f"cannot decode: {type(exc).__name__}: {short_reason(exc)}") from None
    return loaded


def _read(source: Source, limits: Limits) -> LoadedImage:
    fmt = detect_format(source)
    if fmt is None:
        head = _head(source, 16)
        raise ImageReadError(
            source_name(source),
            f"not a PNG, JPEG or DICOM file (content starts with {head!r})"
            if head
            else "empty file",
        )
    if fmt == "dicom":
        from chextriev.io.dicom import read_dicom

        return read_dicom(source, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)
    return _read_raster(source, fmt, limits)


def load_image(source: Source, *, max_pixels: int | None = None,
               max_bytes: int | None = None) -> np.ndarray:
    """``(H, W)`` float32 in ``[0, 1]`` (1 = bright) from a PNG, JPEG or DICOM path or bytes."""
    return read_image(source, max_pixels=max_pixels, max_bytes=max_bytes).pixels


def image_size(source: Source) -> tuple[int, int]:
    """``(H, W)`` of an image, read from its header without decoding the pixels."""
    fmt = detect_format(source)
    name = source_name(source)
    if fmt == "dicom":
        from chextriev.io.dicom import dicom_metadata

        meta = dicom_metadata(source)
        try:
            return int(meta["Rows"]), int(meta["Columns"])
        except (KeyError, TypeError, ValueError):
            raise ImageReadError(name, "DICOM without valid Rows/Columns") from None
    if fmt is None:
        raise ImageReadError(name, "not a PNG, JPEG or DICOM file")
    try:
        with _open_stream(source) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh, formats=_PIL_FORMATS[fmt])
            return int(img.height), int(img.width)
    except Exception as exc:  # noqa: BLE001 - any header failure is this image's failure
        raise ImageReadError(name, f"cannot read the {fmt.upper()} header: {short_reason(exc)}") from None
