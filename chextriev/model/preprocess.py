"""Image and box preprocessing shared by training and inference (one path, no copies).

* ``prepare_image(image (H, W) float [0, 1], size) -> (1, size, size)`` tensor (bilinear with
  antialiasing, aspect ratio not kept);
* ``scale_boxes(boxes (18, 4) original pixels, (H, W), size) -> (18, 4)`` in model-input
  pixels (NaN rows stay NaN);
* ``crop_regions(image (H, W), boxes (18, 4) pixels of that image, size) -> (18, 1, size,
  size)``: the published region crops (``crop`` mode) — each box cut from the image as PIL's
  ``Image.crop`` does (coordinates rounded, outside pixels black), then resized to
  ``size x size`` with antialiased bilinear interpolation as PIL's ``resize`` does (aspect
  ratio not kept). Equal to PIL within 1e-5 on float images (tests/model).

* ``center_crop(image (H, W), boxes (18, 4), fraction) -> (image (h, w), boxes)``: the centre
  ``fraction`` of each side (what a model trained with random crops sees at test,
  ``config.center_crop``); boxes shifted and clipped by :func:`clip_boxes` (boxes left with
  less than ``MIN_BOX_SIDE`` pixels become NaN rows).

A model's input depends on its config alone: :func:`input_boxes` and :func:`prepare_input`
(what ``RetrievalModel.prepare_input`` and the training datasets call) give the resized image
and scaled boxes, or in ``crop`` mode the crops of the original and the boxes unchanged, or for
a foundation encoder its own input preparation (:mod:`chextriev.model.encoders.inputs`: 8-bit
levels, its resize, crop or letterbox; boxes mapped through the same transform); all take the
centre crop first when ``config.center_crop < 1``. The
ImageNet normalisation and the grey-to-3-channel replication happen inside the model
(``chextriev.model.backbone``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.model.config import ModelConfig
from chextriev.model.tensors import MIN_BOX_SIDE, clip_boxes  # noqa: F401 - MIN_BOX_SIDE re-exported


def prepare_image(image: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W)`` float array in [0, 1] -> ``(1, size, size)`` float32 tensor in [0, 1]."""
    tensor = as_image_tensor(image)[None, None]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor[0].clamp_(0.0, 1.0)


def as_image_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(H, W)`` array or tensor (``(H, W, C)`` arrays averaged) -> ``(H, W)`` float32 tensor,
    a copy: the caller's array may be read-only and is never written."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().clone()
        if tensor.ndim == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 2:
            raise ValueError(f"image must be (H, W) or (1, H, W), got shape {tuple(image.shape)}")
        return tensor
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:  # tolerate (H, W, C): average the channels
        array = array.mean(axis=2)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {array.shape}")
    return torch.tensor(array)


def crop_regions(image: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Region crops of ``image (H, W)`` for ``boxes (18, 4)`` x1 y1 x2 y2 in its pixels.

    Returns ``(18, 1, size, size)`` float32 (on the image's device); rows of missing (NaN)
    boxes are zeros. Each present box is rounded to whole pixels (``round``, as PIL), at least
    one pixel wide and high; pixels outside the image are 0, as PIL's crop fills them.
    """
    tensor = as_image_tensor(image)
    height, width = tensor.shape
    box_array = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    box_array = np.asarray(box_array, dtype=np.float64).reshape(-1, 4)
    out = tensor.new_zeros(box_array.shape[0], 1, size, size)
    for r, box in enumerate(box_array):
        if np.isnan(box).any():
            continue
        x0, y0, x1, y1 = (int(v) for v in np.round(box))  # numpy rounds half to even, as Python's round
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        crop = tensor[max(y0, 0):max(min(y1, height), 0), max(x0, 0):max(min(x1, width), 0)]
        left, top = min(max(-x0, 0), x1 - x0), min(max(-y0, 0), y1 - y0)
        crop = F.pad(crop[None, None], (left, x1 - x0 - left - crop.shape[1], top, y1 - y0 - top - crop.shape[0]))
        out[r] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def center_window(shape: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centre ``fraction`` of each side of ``(H, W)``."""
    height, width = shape[:2]
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop(image: np.ndarray | torch.Tensor, boxes: np.ndarray,
                fraction: float) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """The centre ``fraction`` of each side of ``image (H, W)`` and its ``boxes (18, 4)``
    (shifted, clipped; see :func:`clip_boxes`). ``fraction >= 1`` returns both unchanged."""
    if fraction >= 1.0:
        return image, np.asarray(boxes, dtype=np.float32)
    shape = tuple(image.shape[-2:])
    top, left, h, w = center_window(shape, fraction)
    shifted = np.asarray(boxes, dtype=np.float32) - np.array([left, top, left, top], dtype=np.float32)
    return image[..., top:top + h, left:left + w], clip_boxes(shifted, (h, w))


def scale_boxes(boxes: np.ndarray, image_shape: tuple[int, int], size: int) -> np.ndarray:
    """``(18, 4)`` x1 y1 x2 y2 pixels of an ``(H, W)`` image -> pixels of the ``size`` square."""
    height, width = image_shape[:2]
    factor = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32) * factor


def input_boxes(config: ModelConfig, boxes: np.ndarray, shape: tuple[int, int],
                apply_center_crop: bool = True) -> np.ndarray:
    """``(18, 4)`` original-pixel boxes of an ``(H, W)`` image -> the model-input boxes of
    ``config``: unchanged when it crops the original, else scaled to ``image_size`` (after the
    centre crop of ``config.center_crop``, unless ``apply_center_crop`` is False)."""
    if apply_center_crop and config.center_crop < 1.0:
        top, left, h, w = center_window(shape, config.center_crop)
        boxes = clip_boxes(np.asarray(boxes, np.float32) - np.array([left, top, left, top], np.float32), (h, w))
        shape = (h, w)
    if config.crops_original:
        return np.asarray(boxes, dtype=np.float32)
    if config.is_encoder:  # the encoder's own resize / crop / letterbox
        return encoder_input(config).map_boxes(boxes, shape)
    return scale_boxes(boxes, shape, config.image_size)


def encoder_input(config: ModelConfig):
    """The :class:`~chextriev.model.encoders.inputs.InputSpec` of an encoder config."""
    from chextriev.model.encoders.inputs import InputSpec

    return InputSpec.from_dict(config.encoder["input"])


def prepare_input(config: ModelConfig, image: np.ndarray, boxes: np.ndarray,
                  apply_center_crop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One original ``image (H, W)`` in [0, 1] and its ``boxes (18, 4)`` (original pixels) ->
    ``(input, model boxes)``: ``(1, S, S)`` and scaled boxes, or with ``crop`` mode the region
    crops ``(18, 1, C, C)`` of the original and the boxes unchanged. The centre crop of
    ``config.center_crop`` comes first unless ``apply_center_crop`` is False (augmented
    training images, already randomly cropped)."""
    if apply_center_crop and config.center_crop < 1.0:
        image, boxes = center_crop(image, boxes, config.center_crop)
    model_boxes = torch.from_numpy(input_boxes(config, boxes, tuple(image.shape[-2:]), apply_center_crop=False))
    if config.crops_original:
        return crop_regions(image, boxes, config.crop_size), model_boxes
    if config.is_encoder:
        return encoder_input(config).prepare(image), model_boxes
    return prepare_image(image, config.image_size), model_boxes
