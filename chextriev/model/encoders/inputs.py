"""An encoder's input preparation, as its model card specifies it, for a grey radiograph.

:class:`InputSpec` holds what the encoder's own preprocessing does (read from the shipped
``preprocessor_config.json`` / ``open_clip_config.json`` where there is one, else the table's
model-card values, :mod:`chextriev.model.encoders.table`), and :meth:`InputSpec.prepare` does
it to an ``(H, W)`` float image in [0, 1]:

1. the image is quantised to 8 bits (``round(255 x)``), because these encoders' pipelines read
   8-bit RGB images (an 8-bit PNG or JPEG comes back exactly; a 16-bit DICOM loses its low bits,
   as it would in the model card's pipeline);
2. resized: ``shortest`` (the shorter side to ``size``, the longer ``int(size * long / short)``,
   torchvision's and transformers' rule), ``square`` (to ``size x size``, aspect ratio not kept)
   or ``letterbox`` (the longer side to ``size``, the shorter ``int(side * ratio)``, pasted
   centred on a black ``size x size`` square: CheXzero's own preprocessing). ``backend`` says
   whose resampling: ``pil`` (PIL on the 8-bit image: open_clip's transforms, PIL-backend
   processors) or ``torchvision`` (torchvision's antialiased resize of the 8-bit tensor:
   transformers 5's default image processors). Grey is resized as one channel: both libraries
   resize each channel independently, so this equals their result on the grey image made RGB
   (checked in the tests);
3. centre-cropped to ``crop`` (top-left ``floor`` as transformers computes it, or ``round`` as
   torchvision's ``CenterCrop``);
4. optionally resized again to ``then_size`` on the float image (CheXzero resizes its 320 px
   letterboxes to 224 bicubic after normalising; the resize commutes with the normalisation);
5. scaled to [0, 1] (``/ 255``). The model then replicates grey to three channels and
   normalises with ``mean`` / ``std`` (:func:`normalize`), inside the model, as the CNN
   backbones do.

:meth:`InputSpec.box_transform` gives the affine map from original pixels to model-input pixels
(``x' = x * sx + ox``), which maps region boxes onto the input (then onto the patch grid) and
heatmaps back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from chextriev.model.encoders.table import RESAMPLES, RESIZE_BACKENDS, RESIZE_MODES

_PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class InputSpec:
    """See the module docstring. ``mean`` / ``std`` are per RGB channel on the [0, 1] scale."""

    resize: str
    size: int
    resample: str = "bicubic"
    backend: str = "torchvision"
    crop: int | None = None
    crop_rounding: str = "floor"
    then_size: int | None = None
    then_resample: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    source: str = field(default="", compare=False)  # where it was read from (informative)

    def __post_init__(self) -> None:
        from chextriev.errors import UnknownNameError

        for name, value, valid in (("resize mode", self.resize, RESIZE_MODES),
                                   ("resample filter", self.resample, RESAMPLES),
                                   ("resample filter", self.then_resample, RESAMPLES),
                                   ("resize backend", self.backend, RESIZE_BACKENDS),
                                   ("crop rounding", self.crop_rounding, ("floor", "round"))):
            if value not in valid:
                raise UnknownNameError(name, value, valid)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"input mean/std must be 3 values each, std > 0: got {self.mean}, {self.std}")

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @property
    def side(self) -> int:
        """The side of the square model input."""
        if self.then_size:
            return int(self.then_size)
        if self.crop:
            return int(self.crop)
        return int(self.size)

    def with_side(self, side: int) -> InputSpec:
        """The same preparation ending at ``side`` (an architecture whose input differs from the
        model card's, e.g. a small test model): the last resize and the crop target ``side``."""
        if side == self.side:
            return self
        data = self.to_dict()
        if self.then_size:
            data["then_size"] = side
        else:
            data["size"] = side
            if self.crop:
                data["crop"] = side
        return InputSpec.from_dict(data)

    # ------------------------------------------------------------------ geometry
    def resized_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` after the first resize of an ``(H, W)`` image (before crop or padding)."""
        height, width = int(shape[0]), int(shape[1])
        if self.resize == "square":
            return self.size, self.size
        if self.resize == "shortest":
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.size, int(self.size * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        ratio = float(self.size) / max(height, width)
        return int(height * ratio), int(width * ratio)

    def _crop_origin(self, resized: tuple[int, int]) -> tuple[int, int]:
        """``(top, left)`` of the centre crop in the resized image (negative: padding)."""
        if not self.crop:
            return 0, 0
        h, w = resized
        if self.crop_rounding == "round":
            return round((h - self.crop) / 2.0), round((w - self.crop) / 2.0)  # Python rounds half to even, as torchvision
        if self.crop > h or self.crop > w:  # transformers pads first, (c - s) // 2 on the top/left
            top = -((self.crop - h) // 2) if self.crop > h else int((h - self.crop) / 2.0)
            left = -((self.crop - w) // 2) if self.crop > w else int((w - self.crop) / 2.0)
            return top, left
        return int((h - self.crop) / 2.0), int((w - self.crop) / 2.0)

    def box_transform(self, shape: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(sx, sy, ox, oy)``: original pixel ``(x, y)`` of an ``(H, W)`` image -> model-input
        pixel ``(x * sx + ox, y * sy + oy)``."""
        height, width = int(shape[0]), int(shape[1])
        h, w = self.resized_shape(shape)
        sx, sy = w / width, h / height
        ox = oy = 0.0
        if self.resize == "letterbox":
            ox, oy = float((self.size - w) // 2), float((self.size - h) // 2)
            h = w = self.size
        top, left = self._crop_origin((h, w))
        ox, oy = ox - left, oy - top
        if self.then_size:
            before = self.crop or (self.size if self.resize != "shortest" else None)
            if before is None:
                raise ValueError("then_size needs a square image before it (crop, square or letterbox)")
            factor = self.then_size / float(before)
            sx, sy, ox, oy = sx * factor, sy * factor, ox * factor, oy * factor
        return sx, sy, ox, oy

    def map_boxes(self, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``(N, 4)`` x1 y1 x2 y2 original pixels -> model-input pixels, clipped to the input;
        boxes left with less than 2 px (or NaN) become NaN rows (missing regions)."""
        from chextriev.model.tensors import clip_boxes

        sx, sy, ox, oy = self.box_transform(shape)
        scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        scaled = scaled + np.array([ox, oy, ox, oy], np.float32)
        return clip_boxes(scaled, (self.side, self.side))

    # ------------------------------------------------------------------ pixels
    def prepare(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(H, W)`` float image in [0, 1] -> ``(1, S, S)`` float32, 8-bit levels / 255 (values
        of a final ``then_size`` resize may overshoot [0, 1] slightly, as the encoder's own
        pipeline lets them)."""
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 3:
            array = array.mean(axis=2)
        if array.ndim != 2:
            raise ValueError(f"image must be (H, W), got shape {array.shape}")
        levels = np.clip(np.rint(np.nan_to_num(array) * 255.0), 0, 255).astype(np.uint8)
        h, w = self.resized_shape(levels.shape)
        resized = _resize_u8(levels, (h, w), self.resample, self.backend)
        if self.resize == "letterbox":
            canvas = np.zeros((self.size, self.size), np.uint8)
            top, left = (self.size - h) // 2, (self.size - w) // 2
            canvas[top:top + h, left:left + w] = resized
            resized = canvas
        if self.crop:
            resized = _center_crop(resized, self.crop, self._crop_origin(resized.shape))
        tensor = torch.from_numpy(resized.astype(np.float32) / 255.0)[None]
        if self.then_size and tensor.shape[-1] != self.then_size:
            import torchvision.transforms.v2.functional as tvF

            tensor = tvF.resize(tensor, [self.then_size, self.then_size], interpolation=_tv_mode(self.then_resample),
                                antialias=True)
        return tensor.contiguous()


def _tv_mode(resample: str):
    from torchvision.transforms import InterpolationMode

    return {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
            "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS}[resample]


def _resize_u8(levels: np.ndarray, shape: tuple[int, int], resample: str, backend: str) -> np.ndarray:
    h, w = shape
    if levels.shape == (h, w):
        return levels
    if backend == "pil":
        from PIL import Image

        filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "lanczos": Image.LANCZOS}
        return np.asarray(Image.fromarray(levels, mode="L").resize((w, h), resample=filters[resample]))
    import torchvision.transforms.v2.functional as tvF

    out = tvF.resize(torch.from_numpy(levels)[None], [h, w], interpolation=_tv_mode(resample), antialias=True)
    return out[0].numpy()


def _center_crop(levels: np.ndarray, crop: int, origin: tuple[int, int]) -> np.ndarray:
    top, left = origin
    if top < 0 or left < 0:  # pad with black where the crop is larger than the image
        pad_top, pad_left = max(-top, 0), max(-left, 0)
        padded = np.zeros((max(levels.shape[0] + pad_top, crop + max(top, 0)),
                           max(levels.shape[1] + pad_left, crop + max(left, 0))), np.uint8)
        padded[pad_top:pad_top + levels.shape[0], pad_left:pad_left + levels.shape[1]] = levels
        levels, top, left = padded, max(top, 0), max(left, 0)
    return levels[top:top + crop, left:left + crop]


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """``(B, 1, S, S)`` prepared images -> ``(B, 3, S, S)``: grey replicated to RGB, minus
    ``mean`` over ``std`` per channel (what the encoder's processor does after resizing)."""
    mean = images.new_tensor(spec.mean).view(1, 3, 1, 1)
    std = images.new_tensor(spec.std).view(1, 3, 1, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


# ---------------------------------------------------------------------- reading shipped configs
def from_transformers(config: dict[str, Any], default: dict[str, Any], source: str = "") -> InputSpec:
    """An :class:`InputSpec` from a transformers ``preprocessor_config.json`` dict (missing
    fields from ``default``, the model card's). transformers 5 processes with its torchvision
    backend by default (the ``*Fast`` classes' arithmetic)."""
    spec = dict(default)
    spec["backend"] = "torchvision"
    size = config.get("size")
    if config.get("do_resize", True) and size is not None:
        if isinstance(size, int):
            spec["resize"], spec["size"] = ("shortest" if not config.get("default_to_square", True) else "square"), size
        elif "shortest_edge" in size:
            spec["resize"], spec["size"] = "shortest", int(size["shortest_edge"])
        elif "height" in size and "width" in size:
            if int(size["height"]) != int(size["width"]):
                raise ValueError(f"non-square model input {size} is not supported")
            spec["resize"], spec["size"] = "square", int(size["height"])
        else:
            raise ValueError(f"preprocessor size {size} is not supported (shortest_edge or height/width)")
    if "resample" in config:
        code = int(config["resample"])
        if _PIL_CODES.get(code) not in RESAMPLES:
            raise ValueError(f"resample filter {code} ({_PIL_CODES.get(code)}) is not supported")
        spec["resample"] = _PIL_CODES[code]
    if config.get("do_center_crop") and config.get("crop_size") is not None:
        crop = config["crop_size"]
        crop = crop if isinstance(crop, int) else int(crop.get("height", crop.get("shortest_edge", 0)))
        spec["crop"], spec["crop_rounding"] = crop, "floor"
    elif "do_center_crop" in config:
        spec["crop"] = None
    if config.get("do_normalize", True):
        for key, field_name in (("image_mean", "mean"), ("image_std", "std")):
            if key in config:
                value = config[key]
                spec[field_name] = tuple(value) if isinstance(value, (list, tuple)) else (float(value),) * 3
    else:
        spec["mean"], spec["std"] = (0.0,) * 3, (1.0,) * 3
    rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    if not math.isclose(rescale, 1 / 255, rel_tol=1e-6):
        raise ValueError(f"rescale_factor {rescale} is not supported (1/255)")
    spec["then_size"] = None
    spec["source"] = source
    return InputSpec.from_dict(spec)


def from_open_clip(preprocess: dict[str, Any], image_size: int, default: dict[str, Any], source: str = "") -> InputSpec:
    """An :class:`InputSpec` from an ``open_clip_config.json`` ``preprocess_cfg`` (open_clip's
    evaluation transform: torchvision ``Resize`` + ``CenterCrop`` on a PIL image)."""
    spec = dict(default)
    spec.update(backend="pil", size=int(image_size), then_size=None, source=source)
    mode = preprocess.get("resize_mode", "shortest")
    if mode == "shortest":
        spec.update(resize="shortest", crop=int(image_size), crop_rounding="round")
    elif mode == "squash":
        spec.update(resize="square", crop=None)
    else:
        raise ValueError(f"open_clip resize_mode {mode!r} is not supported (shortest or squash)")
    interpolation = preprocess.get("interpolation", "bicubic")
    spec["resample"] = "bilinear" if interpolation == "bilinear" else "bicubic"
    for key in ("mean", "std"):
        if key in preprocess:
            spec[key] = tuple(preprocess[key])
    return InputSpec.from_dict(spec)
