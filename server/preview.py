"""The query preview of a search with an image the archive does not hold (an upload, a PACS
image fetched by reference): the image as a grey JPEG ``data:`` URL of at most
:data:`chextriev.io.pixels.PREVIEW_SIDE` px, what the viewer draws the query at, encoded as the
archive's stored previews are (:func:`chextriev.io.pixels.encode_preview`) but without the
second Huffman pass (``optimize=False``: 4x faster at 1024 px for about 2 % more bytes, right for
an image encoded per request and sent once).

:class:`QueryPreview` starts the encoding in a thread as soon as the pixels are decoded, so that
it runs while the model embeds the query (PIL's resize and JPEG encoder release the GIL, as the
model does); the response only joins it (BENCHMARKS.md, *Response stage of an upload*).
"""

from __future__ import annotations

import base64
import threading

import numpy as np

from chextriev.io.pixels import PREVIEW_SIDE, encode_preview


def preview_url(pixels: np.ndarray) -> str:
    """``pixels (H, W)`` in [0, 1] as the query preview's ``data:`` URL."""
    data = encode_preview(pixels, PREVIEW_SIDE, optimize=False)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


class QueryPreview:
    """The query preview of ``pixels``, encoded in a background thread from construction on;
    :meth:`url` waits for it (and raises what the encoding raised)."""

    def __init__(self, pixels: np.ndarray):
        self._url: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, args=(pixels,), name="query-preview",
                                         daemon=True)
        self._thread.start()

    def _encode(self, pixels: np.ndarray) -> None:
        try:
            self._url = preview_url(pixels)
        except BaseException as error:  # noqa: BLE001 - handed to the request thread by url()
            self._error = error

    def url(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._url is not None
        return self._url
