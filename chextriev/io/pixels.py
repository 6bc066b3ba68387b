"""THE image contract: how decoded pixels become what the model is handed, a preview and a thumbnail.

Every caller that embeds an image (the indexer's decoding workers, an upload, a PACS image
fetched by reference, the evaluator) hands the model :func:`model_pixels` of the decoded
``(H, W)`` float32 pixels in ``[0, 1]`` (``chextriev.io.images.load_image``), driven by the
model's ``LoadedModel.max_input_side``:

* ``None`` (a ``crop``-mode model, which cuts its region crops from the full-resolution
  original, or a model that centre-crops the original before resizing): the pixels unchanged;
* ``S``: the model's first step is the square resize of the whole image to ``S x S``
  (``chextriev.model.preprocess.prepare_image``: bilinear with antialiasing, aspect not kept).
  :func:`model_pixels` does that resize itself, with the same filter (PIL's ``BILINEAR`` on
  float images equals torch's antialiased bilinear within 1e-5), so that the model's own resize
  is then the identity: the model sees the same input from a pre-shrunk image as from the
  original, and an image that is larger than ``S`` costs ``S x S`` pixels in memory and between
  processes. An image no larger than ``S`` on either side is left as it is (the model's resize
  is the whole resize).

Boxes follow with :class:`ModelPixels`: ``boxes in model pixels = boxes in original pixels x
scale`` per axis (:meth:`ModelPixels.to_model`, :meth:`ModelPixels.to_original`).

:func:`shrink` is THE shrink of the project (aspect kept, never enlarged, the same filter):
previews (:func:`encode_preview`, grey JPEG of about 1024 px: what the viewer shows an archived
case at), thumbnails (:func:`encode_thumbnail`, grey JPEG of 128 px, stored once as encoded and
served as stored) and the heatmap of an upload. numpy and PIL only: the decoding workers
import this without torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

from chextriev.io.images import JPEG_MAGIC, PNG_MAGIC

#: The default longest side of a stored preview (``chextriev index --preview-side``; 0 = none).
PREVIEW_SIDE = 1024
#: The longest side of a stored thumbnail.
THUMBNAIL_SIDE = 128
#: JPEG quality of previews and thumbnails.
JPEG_QUALITY = 85
PREVIEW_QUALITY = JPEG_QUALITY
#: The model's filter: antialiased bilinear (a triangle filter widened by the scale when shrinking).
FILTER = PILImage.Resampling.BILINEAR


def _checked(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"pixels must be a non-empty (H, W) array, got shape {array.shape}")
    return array


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1] -> ``(height, width)`` with the model's filter (:data:`FILTER`),
    clipped to [0, 1]; the pixels unchanged (as float32) when the size is already that."""
    array = _checked(pixels)
    if array.shape == (height, width):
        return array
    image = PILImage.fromarray(np.ascontiguousarray(array), mode="F").resize((int(width), int(height)), FILTER)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def shrink(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1] -> ``(H', W')`` with ``max(H', W') <= max_side``, aspect kept
    (each side rounded, at least 1), never enlarged; the pixels unchanged when they fit or
    ``max_side`` is None."""
    array = _checked(pixels)
    height, width = array.shape
    if max_side is None or max(height, width) <= max_side:
        return array
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    scale = max_side / max(height, width)
    return resize(array, max(1, round(height * scale)), max(1, round(width * scale)))


@dataclass(frozen=True)
class ModelPixels:
    """What the model is handed for one image: ``pixels (h, w)`` float32 in [0, 1], ``scale``
    ``(sx, sy)`` model pixels per original pixel along x and y, ``original_shape (H, W)``."""

    pixels: np.ndarray
    scale: tuple[float, float]
    original_shape: tuple[int, int]

    @property
    def _factors(self) -> np.ndarray:
        sx, sy = self.scale
        return np.array([sx, sy, sx, sy], dtype=np.float64)

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        """``(..., 4)`` x1 y1 x2 y2 in original pixels -> in model pixels (NaN stays NaN)."""
        return (np.asarray(boxes, dtype=np.float64) * self._factors).astype(np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """``(..., 4)`` x1 y1 x2 y2 in model pixels -> in original pixels (NaN stays NaN)."""
        return (np.asarray(boxes, dtype=np.float64) / self._factors).astype(np.float32)


def model_pixels(pixels: np.ndarray, max_input_side: int | None) -> ModelPixels:
    """The pixels to hand the model for an image whose model reads at most ``max_input_side``
    (``LoadedModel.max_input_side``; see the module docstring): the ``S x S`` square resize of
    an image larger than ``S`` on either side, else the pixels unchanged."""
    array = _checked(pixels)
    height, width = array.shape
    if max_input_side is None or max(height, width) <= max_input_side:
        return ModelPixels(array, (1.0, 1.0), (height, width))
    side = int(max_input_side)
    if side < 1:
        raise ValueError(f"max_input_side must be at least 1 or None, got {max_input_side}")
    return ModelPixels(resize(array, side, side), (side / width, side / height), (height, width))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 1] -> uint8 (rounded half up, clipped)."""
    return np.clip(np.asarray(pixels, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, max_side: int, quality: int = JPEG_QUALITY) -> bytes:
    """An 8-bit grey JPEG of :func:`shrink` ``(pixels, max_side)``."""
    image = PILImage.fromarray(to_uint8(shrink(pixels, int(max_side))), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def encode_preview(pixels: np.ndarray, side: int = PREVIEW_SIDE, quality: int = PREVIEW_QUALITY) -> bytes | None:
    """The preview of an image: a grey JPEG whose longer side is at most ``side`` (never
    enlarged); None when ``side`` is 0 (no previews)."""
    if not side:
        return None
    return encode_jpeg(pixels, int(side), quality)


def encode_thumbnail(pixels: np.ndarray, side: int = THUMBNAIL_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """The catalog thumbnail of an image: a grey JPEG whose longer side is at most ``side``
    (about 3-4 kB at 128 px), encoded once in the decoding worker and served as stored."""
    return encode_jpeg(pixels, side, quality)


def image_mimetype(data: bytes) -> str:
    """The MIME type of stored image bytes: ``image/jpeg`` (what :func:`encode_thumbnail` and
    :func:`encode_preview` make) or ``image/png`` (thumbnails of catalogs written before them)."""
    head = bytes(data[:8])
    if head.startswith(PNG_MAGIC):
        return "image/png"
    if head.startswith(JPEG_MAGIC):
        return "image/jpeg"
    raise ValueError("stored image bytes are neither JPEG nor PNG")
