"""Region features: ``(images, boxes) -> (B, 18, width)`` node features and a ``(B, 18)`` mask.

Two modes (SPEC section 4):

* ``roi`` (default): one backbone pass over the whole ``image_size`` image, RoIAlign of every
  region box on the stride-32 feature map (``roi_output`` grid, averaged): ``(B, 18, F)``;
* ``crop`` (published): each box cut from the full-resolution original and resized to
  ``crop_size`` x ``crop_size`` with antialiasing (aspect ratio not kept; PIL crop + resize,
  :func:`chextriev.model.preprocess.crop_regions`), each crop through the backbone and
  average-pooled. ``image_size`` plays no part: the crops come from the original pixels.

Then the trainable projection ``F -> width -> ReLU -> width``. Missing regions (NaN boxes) are
masked: their features are zeros and the mask is False.

Model input: :func:`chextriev.model.preprocess.prepare_input` turns one original image and its
boxes (original pixels) into what :meth:`RegionFeatures.extract` takes: ``(1, S, S)`` and boxes
scaled to it (roi), or the 18 crops ``(18, 1, C, C)`` and the boxes unchanged (crop). The frozen part
(``extract``) is separate from the projection so that its output can be cached
(``chextriev.training.feature_cache``).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from chextriev.model.backbone import build_trunk, freeze, normalize, to_channels_last
from chextriev.model.config import ModelConfig
from chextriev.model.preprocess import crop_regions
from chextriev.model.tensors import box_mask
from chextriev.vocab import NUM_REGIONS

__all__ = ["SCALE_FLOOR", "GlobalFeatures", "RegionFeatures", "box_mask", "feature_scale", "roi_pool"]


SCALE_FLOOR = 1e-3
"""Least scale of a channel (absolute; the rule in use, see :func:`feature_scale`)."""
SCALE_EPSILON = 1e-6
"""Least scale under the relative rule: only matters when no channel varies at all."""


def feature_scale(std: torch.Tensor, relative: float | None = None) -> torch.Tensor:
    """Per-channel scale ``(F,)`` of the feature standardisation from the fitted ``std (F,)``.

    The rule in use (``relative=None``): ``max(std, SCALE_FLOOR)``, an absolute floor of 1e-3.
    ``relative=f``: ``max(std, f * median std of the channels that vary)``, at least
    :data:`SCALE_EPSILON`: scale-invariant (features multiplied by a constant standardise alike,
    which an absolute floor does not), measured and NOT adopted, because it costs retrieval
    quality (below).

    What the floor decides: a random-init backbone has dead channels (all zero after the ReLU on
    the fit images) and sparse ones that fire on a few images only (ResNet50 at 512 px on the
    synthetic archive: 127 of 2048 dead, 150 with std below 1e-3, against a median std of 4.4).
    Under the absolute floor such a channel reaches tens of "standard deviations" on a new image
    and weighs heavily in the embedding; its values come from near-cancelling sums before the
    ReLU, so bf16 errs there by ~2 % relative instead of 0.4 %, and this is why the default
    architecture's bf16 embeddings agree with fp32 at cosine 0.978-0.997 only. A floor of 0.01,
    0.03 or 0.1 times the median std brings bf16 to cosine >= 0.999 (0.99900 / 0.99903 /
    0.99909), but V6 trained with it on ResNet50 features at 512 px does worse in fp32 (three
    seeds: test mAP@10 0.553 -> 0.508-0.537, AUROC 0.820 -> 0.777-0.784): the sparse channels carry
    signal the projection learns from (``benchmarks/scale_floor.py``, BENCHMARKS.md
    "Precision"). Hence the absolute floor stays; ``--precision auto`` keeps such models in fp32.

    Checkpoints keep their fitted ``feature_scale`` buffer: a model loaded from one standardises
    exactly as when it was saved, whichever rule fitted it.
    """
    std = torch.nan_to_num(std.float(), nan=0.0).clamp_min(0.0)  # NaN: std of a single row
    if relative is None:
        return std.clamp_min(SCALE_FLOOR)
    varying = std[std > 0]
    typical = varying.median() if varying.numel() else std.new_zeros(())
    return torch.maximum(std, relative * typical).clamp_min(SCALE_EPSILON)


def _roi_list(boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Present boxes as RoIAlign rows ``(n, 5)``: batch index, x1, y1, x2, y2 (min size 1 px)."""
    batch_index, region_index = torch.nonzero(mask, as_tuple=True)
    chosen = boxes[batch_index, region_index].float()
    x1 = torch.minimum(chosen[:, 0], chosen[:, 2])
    y1 = torch.minimum(chosen[:, 1], chosen[:, 3])
    x2 = torch.maximum(torch.maximum(chosen[:, 0], chosen[:, 2]), x1 + 1.0)
    y2 = torch.maximum(torch.maximum(chosen[:, 1], chosen[:, 3]), y1 + 1.0)
    return torch.stack([batch_index.to(chosen.dtype), x1, y1, x2, y2], dim=1)


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(n, F)`` rows for the True entries of ``mask (B, 18)`` -> ``(B, 18, F)`` (zeros elsewhere)."""
    out = values.new_zeros(mask.shape[0], mask.shape[1], values.shape[-1])
    out[mask] = values
    return out


def roi_pool(feature_map: torch.Tensor, boxes: torch.Tensor, image_size: int, output: int) -> torch.Tensor:
    """RoIAlign of ``boxes (B, 18, 4)`` (pixels of the ``image_size`` model input) on
    ``feature_map (B, F, h, w)`` -> ``(B, 18, F)``, zeros for missing regions.

    The map's cell ``(i, j)`` covers input pixels ``[j s, (j + 1) s) x [i s, (i + 1) s)`` with
    ``s = image_size / w`` (a CNN's stride, or a ViT's patch: its token grid is such a map), and
    its value sits at the cell centre (``aligned=True``). Each box is split into ``output x output``
    bins, each bin bilinearly sampled at 2 x 2 points, and the bins averaged.
    """
    mask = box_mask(boxes)
    if not bool(mask.any()):
        return feature_map.new_zeros(boxes.shape[0], NUM_REGIONS, feature_map.shape[1])
    rois = _roi_list(boxes, mask).to(feature_map.dtype)
    scale = feature_map.shape[-1] / float(image_size)
    pooled = roi_align(feature_map, rois, output_size=(output, output), spatial_scale=scale,
                       sampling_ratio=2, aligned=True)
    return _scatter(pooled.mean(dim=(2, 3)), mask)


class GlobalFeatures(nn.Module):
    """The frozen (or trainable) trunk with global average pooling: ``(B,1,S,S) -> (B, F)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.is_encoder:
            from chextriev.model.encoders.build import encoder_trunk
            from chextriev.model.encoders.inputs import InputSpec

            # a foundation encoder: trunk(pixels) -> (global (B, G), token grid (B, D, h, w))
            self.trunk = encoder_trunk(config)
            self.input_spec = InputSpec.from_dict(config.encoder["input"])
        else:
            self.trunk = build_trunk(config.backbone, config.backbone_weights, config.backbone_seed,
                                     config.backbone_weights_format)
        if not config.train_backbone:
            freeze(self.trunk)
        # Fixed per-channel standardisation of the frozen features, fitted on the training set
        # (``set_feature_stats``); identity until fitted. Saved in the state dict.
        self.register_buffer("feature_shift", torch.zeros(config.feature_dim))
        self.register_buffer("feature_scale", torch.ones(config.feature_dim))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise backbone features with the training set's per-channel ``mean``/``std``
        ``(F,)``; the scale is :func:`feature_scale` of ``std`` (at least 1e-3). Every fit of the
        statistics (training, benchmarks, tests) goes through here."""
        self.feature_shift.copy_(mean.to(self.feature_shift))
        self.feature_scale.copy_(feature_scale(std).to(self.feature_scale))

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., F)`` backbone features -> ``(features - shift) / scale``."""
        return (features - self.feature_shift) / self.feature_scale

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.train_backbone:
            self.trunk.eval()
        return self

    def trunk_input(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> what the trunk takes (normalised for its weights format;
        an encoder's: grey replicated to RGB, its own mean and std)."""
        if self.config.is_encoder:
            from chextriev.model.encoders.inputs import normalize as encoder_normalize

            return to_channels_last(encoder_normalize(images, self.input_spec))  # what a compiled trunk takes
        return to_channels_last(normalize(images, self.config.backbone_weights_format))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoders: ``(B, 1, S, S)`` prepared images -> ``(global (B, G), token grid (B, D, h, w))``
        (through the compiled trunk when one is set and no gradient is wanted)."""
        trunk = getattr(self, "compiled_trunk", None) or self.trunk
        return trunk(self.trunk_input(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> ``(B, F, S/32, S/32)`` (through the compiled trunk when
        `chextriev.compiled` installed one and no gradient is wanted); for an encoder its
        patch-token grid ``(B, D, S/p, S/p)`` (what RoIAlign pools and Grad-CAM explains)."""
        if self.config.is_encoder:
            return self.encode(images)[1]
        trunk = getattr(self, "compiled_trunk", None) or self.trunk
        return trunk(self.trunk_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The global feature ``(B, F)``: the average-pooled map, or an encoder's own global
        embedding (CLS / pooled)."""
        if self.config.is_encoder:
            return self.encode(images)[0]
        return self.feature_map(images).mean(dim=(2, 3))


class RegionFeatures(GlobalFeatures):
    """Region features in ``roi`` or ``crop`` mode followed by the trainable projection."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.projection = nn.Sequential(
            nn.Linear(config.feature_dim, config.width), nn.ReLU(), nn.Linear(config.width, config.width)
        )

    def pool_regions(self, feature_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign of ``boxes (B, 18, 4)`` (model-input pixels) on ``feature_map (B, F, h, w)``.

        Returns ``(B, 18, F)``, zeros for missing regions.
        """
        return roi_pool(feature_map, boxes, self.config.image_size, self.config.roi_output)

    def extract(self, inputs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The backbone part -> ``(B, 18, F)``, zeros for missing regions.

        ``inputs``: roi mode ``(B, 1, S, S)`` in [0, 1] with ``boxes (B, 18, 4)`` in its pixels.
        Crop mode: the prepared crops ``(B, 18, 1, C, C)``, or images ``(B, 1, H, W)`` (taken as
        the originals: cropped here as ``prepare_input`` does, ``boxes`` in their pixels).
        """
        if self.config.feature_mode == "roi":
            return self.pool_regions(self.feature_map(inputs), boxes)
        mask = box_mask(boxes)
        if inputs.ndim == 4:  # whole images: crop them as prepare_input does
            inputs = torch.stack([crop_regions(image, b, self.config.crop_size) for image, b in zip(inputs, boxes)])
        crops = inputs[mask]  # (n, 1, C, C)
        if crops.shape[0] == 0:
            return inputs.new_zeros(boxes.shape[0], NUM_REGIONS, self.config.feature_dim)
        return _scatter(self.feature_map(crops).mean(dim=(2, 3)), mask)

    def project(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, 18, F)`` -> node features ``(B, 18, width)``; masked nodes set to zero."""
        return self.projection(self.standardize(features)) * mask.unsqueeze(-1).to(features.dtype)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, S, S)``, ``(B, 18, 4)`` -> node features ``(B, 18, width)``, mask ``(B, 18)``."""
        mask = box_mask(boxes)
        return self.project(self.extract(images, boxes), mask), mask
