"""Training augmentation with torchvision's transforms v2 (boxes move with the image).

:class:`AugmentConfig` names every transform and its strength; :data:`AUGMENTATIONS` holds the
named settings (``none``, ``standard``) that presets refer to. :class:`Augmenter` applies one
to an original image ``(H, W)`` in [0, 1] with its region boxes ``(18, 4)`` (pixels of that
image, NaN rows = missing) and region labels ``(18, C)``, in this order:

1. random crop: each side keeps a fraction drawn from ``[crop, 1]`` (same fraction for both
   sides), at a random position; the model then resizes the crop as usual (so it also zooms).
   A model trained with ``crop < 1`` takes the centre ``(1 + crop) / 2`` of each side at test
   (``ModelConfig.center_crop``, set by training: :attr:`AugmentConfig.test_center_crop`);
2. ``RandomAffine``: shift up to ``shift`` of each side, rotation up to ``rotation`` degrees,
   scale in ``scale``; pixels outside the image are black (as the crops of the original);
3. ``RandomPerspective`` (``perspective`` = distortion scale, applied to half of the images);
4. ``ColorJitter`` brightness and contrast;
5. horizontal flip with probability ``flip``, only where :func:`flip_allowed` says so.

Boxes are transformed as ``tv_tensors.BoundingBoxes`` (a rotated box becomes the box around its
corners), clipped to the image, and a box left narrower or lower than
:data:`chextriev.model.preprocess.MIN_BOX_SIDE` pixels becomes a NaN row: that region is missing
for this sample (masked node) and its region labels are NaN (ignored by the loss).

**Horizontal flips.** A flip mirrors the patient: the right lung lands where the left one was
and the heart on the image's other side (a dextrocardia-like image). So a flipped sample swaps
the rows of its left and right regions (boxes and region labels; :data:`MIRROR`), and an image
is flipped only when it is safe to say its labels still hold:

* never when a finding of :data:`NO_FLIP_FINDINGS` (the heart's and mediastinum's shape and
  position are the finding: enlarged cardiac silhouette / cardiomegaly / enlarged
  cardiomediastinum, heart failure, hiatal hernia, dextrocardia, situs inversus), or any class
  whose name says a side (``left`` / ``right``), is positive or unknown (NaN);
* never when the record says dextrocardia or situs inversus (``meta["dextrocardia"]`` or
  ``meta["situs_inversus"]`` true);
* never when the image's labels are unknown.

Image labels do not change under a flip. Flips are off unless a setting asks for them
(``standard``: 0.5).

Augmented training cannot use the frozen-feature cache (the input changes every epoch): the
training split is read as images and runs the backbone on every batch; validation and test stay
un-augmented and cached (see :class:`chextriev.training.data.RetrievalDataModule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chextriev.errors import UnknownNameError
from chextriev.vocab import NUM_REGIONS, REGIONS

# torch and torchvision are imported by Augmenter only: the names and configs here are read by
# `chextriev train --help`, which must not load them


def _mirror_order() -> tuple[int, ...]:
    def mirrored(name: str) -> str:
        return name.replace("right", "\0").replace("left", "right").replace("\0", "left")

    return tuple(REGIONS.index(mirrored(name)) for name in REGIONS)


#: ``MIRROR[r]``: the region that region ``r`` becomes in a horizontally flipped image.
MIRROR: tuple[int, ...] = _mirror_order()

#: Findings (normalised names) under which an image is never flipped (see the module docstring).
NO_FLIP_FINDINGS: frozenset[str] = frozenset({
    "enlarged cardiac silhouette", "cardiomegaly", "enlarged cardiomediastinum",
    "fluid overload/heart failure", "hernia", "dextrocardia", "situs inversus",
})


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def side_bound(class_name: str) -> bool:
    """True for a class whose meaning depends on the side (never flipped when positive or unknown)."""
    name = _norm(class_name)
    return name in NO_FLIP_FINDINGS or any(word in name.replace("/", " ").split() for word in ("left", "right"))


def flip_allowed(labels: np.ndarray | None, class_names: Sequence[str], meta: Mapping[str, Any] | None = None) -> bool:
    """Whether an image with ``labels (C,)`` (NaN = unknown) over ``class_names`` may be
    flipped horizontally: no side-bound class (:func:`side_bound`) positive or unknown, no
    dextrocardia / situs inversus flag in ``meta``, labels known."""
    if labels is None:
        return False
    meta = meta or {}
    if any(bool(meta.get(flag)) for flag in ("dextrocardia", "situs_inversus")):
        return False
    labels = np.asarray(labels, dtype=np.float32)
    for value, name in zip(labels, class_names):
        if side_bound(name) and value != 0:  # positive or NaN (unknown)
            return False
    return True


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each transform (0 / 1 / ``(1, 1)`` = off); see the module docstring."""

    name: str = "none"
    crop: float = 1.0  # smallest kept fraction of each side of the random crop
    shift: float = 0.0  # largest shift, fraction of each side
    rotation: float = 0.0  # largest rotation, degrees
    scale: tuple[float, float] = (1.0, 1.0)
    perspective: float = 0.0  # distortion scale of RandomPerspective (p = 0.5)
    brightness: float = 0.0
    contrast: float = 0.0
    flip: float = 0.0  # probability of a horizontal flip where flip_allowed

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"augmentation crop must be in (0, 1], got {self.crop}")
        if not 0.0 <= self.flip <= 1.0 or not 0.0 <= self.perspective < 1.0:
            raise ValueError("augmentation flip must be in [0, 1] and perspective in [0, 1)")
        if len(self.scale) != 2 or not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augmentation scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for field_name in ("shift", "rotation", "brightness", "contrast"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"augmentation {field_name} must be >= 0")

    @property
    def enabled(self) -> bool:
        return (self.crop < 1.0 or self.shift > 0 or self.rotation > 0 or self.scale != (1.0, 1.0)
                or self.perspective > 0 or self.brightness > 0 or self.contrast > 0 or self.flip > 0)

    @property
    def test_center_crop(self) -> float:
        """The centre fraction of each side a model trained with this setting sees at test:
        the mean of the random crop's range, ``(1 + crop) / 2`` (1 without random crops)."""
        return 1.0 if self.crop >= 1.0 else round((1.0 + self.crop) / 2.0, 4)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        return data


AUGMENTATIONS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    # the usual chest X-ray classifier setting (CheXpert / CheXNet style training)
    "standard": AugmentConfig(name="standard", crop=0.85, shift=0.05, rotation=10.0, scale=(0.9, 1.1),
                              perspective=0.1, brightness=0.2, contrast=0.2, flip=0.5),
}


def get_augmentation(value: str | AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
    """A setting by name (:data:`AUGMENTATIONS`), a config, or its ``to_dict``; ``None`` = off."""
    if value is None:
        return AUGMENTATIONS["none"]
    if isinstance(value, AugmentConfig):
        return value
    if isinstance(value, Mapping):
        return AugmentConfig(**dict(value))
    if value not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", value, AUGMENTATIONS)
    return AUGMENTATIONS[value]


class Augmenter:
    """One random augmentation per call (torch's global RNG: seeded by the training seed, per
    DataLoader worker by Lightning)."""

    def __init__(self, config: AugmentConfig, class_names: Sequence[str]):
        from torchvision.transforms import v2

        self.config = config
        self.class_names = tuple(class_names)
        geometric: list[Any] = []
        c = config
        if c.shift > 0 or c.rotation > 0 or c.scale != (1.0, 1.0):
            geometric.append(v2.RandomAffine(degrees=c.rotation, translate=(c.shift, c.shift) if c.shift else None,
                                             scale=None if c.scale == (1.0, 1.0) else c.scale, fill=0.0))
        if c.perspective > 0:
            geometric.append(v2.RandomPerspective(distortion_scale=c.perspective, p=0.5, fill=0.0))
        if c.brightness > 0 or c.contrast > 0:
            geometric.append(v2.ColorJitter(brightness=c.brightness or None, contrast=c.contrast or None))
        self.transform = v2.Compose(geometric) if geometric else None

    def _random_crop(self, image, boxes):
        import torch
        from torchvision.transforms.v2 import functional as TF

        height, width = image.shape[-2:]
        fraction = float(torch.empty(()).uniform_(self.config.crop, 1.0))
        h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return TF.crop(image, top, left, h, w), TF.crop(boxes, top, left, h, w)

    def __call__(self, image, boxes: np.ndarray, region_labels: np.ndarray,
                 labels: np.ndarray | None = None, meta: Mapping[str, Any] | None = None):
        """``image (H, W)`` array or tensor, ``boxes (18, 4)`` its pixels, ``region_labels
        (18, C)`` -> ``(image (h, w) float32 tensor in [0, 1], boxes (18, 4), region labels
        (18, C))``."""
        import torch
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        from chextriev.model.preprocess import as_image_tensor, clip_boxes

        tensor = tv_tensors.Image(as_image_tensor(image)[None])
        boxes = np.asarray(boxes, dtype=np.float32).reshape(NUM_REGIONS, 4)
        region_labels = np.array(region_labels, dtype=np.float32, copy=True)
        present = ~np.isnan(boxes).any(axis=1)
        box_tensor = tv_tensors.BoundingBoxes(torch.from_numpy(boxes[present]).reshape(-1, 4), format="XYXY",
                                              canvas_size=tuple(tensor.shape[-2:]))
        if self.config.crop < 1.0:
            tensor, box_tensor = self._random_crop(tensor, box_tensor)
        if self.transform is not None:
            tensor, box_tensor = self.transform(tensor, box_tensor)
        flipped = (self.config.flip > 0 and float(torch.rand(())) < self.config.flip
                   and flip_allowed(labels, self.class_names, meta))
        if flipped:
            tensor, box_tensor = TF.horizontal_flip(tensor), TF.horizontal_flip(box_tensor)
        out_boxes = np.full((NUM_REGIONS, 4), np.nan, np.float32)
        out_boxes[present] = clip_boxes(box_tensor.as_subclass(torch.Tensor).numpy(), tuple(tensor.shape[-2:]))
        if flipped:
            order = list(MIRROR)
            out_boxes, region_labels = out_boxes[order], region_labels[order]
        region_labels[np.isnan(out_boxes).any(axis=1)] = np.nan
        return tensor.as_subclass(torch.Tensor)[0].clamp(0.0, 1.0), out_boxes, region_labels


def base_side(image_size: int, config: AugmentConfig) -> int:
    """Longest side worth keeping of an image a ``roi``/global model of ``image_size`` trains on
    with ``config``: a random crop keeps ``crop`` of each side, then is resized to ``image_size``."""
    return math.ceil(image_size / min(config.crop, 1.0))
