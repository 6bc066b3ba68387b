"""A colour overlay of a heatmap on its radiograph, as PNG bytes (for the server)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """``(H, W)`` image in [0, 1] and ``(H, W)`` heatmap in [0, 1] -> ``(H, W, 3)`` uint8.

    The colour is blended in proportion to the heat (``alpha * heat``), so cold pixels show
    the radiograph unchanged. A heatmap of another size is resized to the image.
    """
    from matplotlib import colormaps

    gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if gray.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {gray.shape}")
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0, 1)
    if heat.shape != gray.shape:
        resized = Image.fromarray(heat).resize((gray.shape[1], gray.shape[0]), Image.BILINEAR)
        heat = np.clip(np.asarray(resized, dtype=np.float32), 0, 1)
    colour = colormaps[colormap](heat)[..., :3].astype(np.float32)
    weight = (alpha * heat)[..., None]
    rgb = (1 - weight) * gray[..., None] + weight * colour
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(image, heatmap, alpha, colormap), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
