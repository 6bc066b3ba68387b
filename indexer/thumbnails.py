"""Compact catalog thumbnails: 128 px 8-bit grey JPEG (about 3-4 KB), PNG on the way out.

The decoding workers hand over a PNG thumbnail (``indexer.decode``); the writer stores it as a
small JPEG (:func:`compact`). :func:`as_png` gives the PNG the read side promises
(``Catalog.thumbnail``), and passes PNG thumbnails of older catalogs through unchanged.
"""

from __future__ import annotations

import io

from PIL import Image as PILImage

THUMBNAIL_SIDE = 128
JPEG_QUALITY = 85
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compact(data: bytes | None, side: int = THUMBNAIL_SIDE, quality: int = JPEG_QUALITY
            ) -> bytes | None:
    """Any image bytes -> an 8-bit grey JPEG whose longer side is at most ``side``."""
    if not data:
        return None
    with PILImage.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode == "L" and max(image.size) <= side:
            return bytes(data)  # already compact (e.g. made so by the decoding worker)
        image = image.convert("L")
        if max(image.size) > side:
            image.thumbnail((side, side), PILImage.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def as_png(data: bytes) -> bytes:
    """A stored thumbnail (JPEG, or PNG from an older catalog) as PNG bytes."""
    data = bytes(data)
    if data.startswith(PNG_MAGIC):
        return data
    with PILImage.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def mimetype(data: bytes) -> str:
    return "image/png" if bytes(data[:8]) == PNG_MAGIC else "image/jpeg"
