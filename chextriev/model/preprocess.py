"""Image and box preprocessing shared by training and inference (one path, no copies).

``prepare_image(image (H, W) float [0, 1], size) -> (1, size, size)`` tensor (bilinear with
antialiasing, aspect ratio not kept), and ``scale_boxes(boxes (18, 4) original pixels, (H, W),
size) -> (18, 4)`` in model-input pixels (NaN rows stay NaN). The ImageNet normalisation and
the grey-to-3-channel replication happen inside the model (``chextriev.model.backbone``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def prepare_image(image: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W)`` float array in [0, 1] -> ``(1, size, size)`` float32 tensor in [0, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:  # tolerate (H, W, C): average the channels
        array = array.mean(axis=2)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {array.shape}")
    # A copy: the caller's array may be read-only (decoded buffers) and must never be written.
    tensor = torch.tensor(array)[None, None]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor[0].clamp_(0.0, 1.0)


def scale_boxes(boxes: np.ndarray, image_shape: tuple[int, int], size: int) -> np.ndarray:
    """``(18, 4)`` x1 y1 x2 y2 pixels of an ``(H, W)`` image -> pixels of the ``size`` square."""
    height, width = image_shape[:2]
    factor = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32) * factor
