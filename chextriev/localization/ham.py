"""HAM: hierarchical attention mining (Ouyang et al., IEEE TMI 2021) as a localization method.

Written from the paper and its published code (github.com/oyxhust/HAM), on this project's
backbone (:func:`chextriev.model.backbone.build_trunk`)::

    image (B, 1, S, S) -> trunk (frozen by default) -> A (B, F, h, w)
    A -> foreground attention module -> A_fa (B, F/4, h, w)
    [A ; A_fa] -> conv3x3 + BN + ReLU + dropout -> X (B, K, h, w)
    X -> LSE pooling (r) -> x (B, K) -> abnormality logit  w_a . x   (one "any finding" unit)
                                     -> class logits       W_c x     (C findings)
    CAMs (weights detached, as published): M_a = ReLU(w_a . X) (B, 1, h, w), M_c = ReLU(W_c X)

Soft masking ``T(M) = sigmoid(w (M - sigma))`` of a min-max normalised map (``cam_w``,
``cam_sigma``) turns a CAM into a near-binary attention mask. Losses (:func:`ham_losses`, each
with its own weight in :class:`HAMConfig`):

* ``anomaly``: BCE of the abnormality logit against "any finding" (the abnormality attention
  learns where anything abnormal is);
* ``cls``: BCE of the class logits (masked labels, NaN, are left out);
* ``remainder``: classification of the masked-out remainder (the attention-mining term of the
  paper, after GAIN): for each positive (image, class), the feature map with the class's soft
  mask removed, ``X * (1 - T(M_c))``, is pooled and classified; its class probability is
  pushed to 0, so the map has to cover all of the evidence, not only its most discriminative
  part. Computed on the feature map (one trunk pass), not on a masked image;
* ``box`` (images with boxes): squared error between the soft-masked class map at input
  resolution and the box mask, normalised by their areas (the published ``ex_cls`` term);
* ``bound``: the part of each positive class map outside the abnormality map,
  ``(sum M_c - sum min(M_c, M_a) T'(M_c)) / sum M_c`` (class attention inside abnormality
  attention);
* ``union``: the part of the abnormality map not covered by the union of the class maps,
  ``(sum M_a - sum min(max_c M_c, M_a) T'(M_a)) / sum M_a``, on abnormal images.

``T'`` uses ``cam_loss_sigma`` on the raw maps, as published. The published code has no
``remainder`` term (its ``loss_ex_cls`` is the box term); its weights are the defaults of the
other five.

Heatmap (:func:`ham_heatmap`): the class map ``M_c`` upsampled to the image and min-max
normalised, multiplied by the soft-masked abnormality attention ``T(M_a)`` (``combine=
"attention"``, default: the attention gates the class map), or the class map alone
(``combine="class"``: what the published test code thresholds). Either is in ``[0, 1]`` and
goes through the same :func:`~chextriev.localization.regions.heatmap_to_boxes` and metrics as
CAM / Grad-CAM / Grad-CAM++.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.files import atomic_path, sha256_file
from chextriev.localization.adapters import CamPipeline
from chextriev.model.backbone import (
    build_trunk,
    check_backbone,
    freeze,
    normalize,
    to_channels_last,
    trunk_channels,
    weights_restored_later,
)
from chextriev.model.config import CNN_BACKBONES, XRV_INPUT_SIZE
from chextriev.model.heads import masked_bce
from chextriev.model.preprocess import prepare_image
from chextriev.vocab import IMAGENOME_FINDINGS, finding_index

log = logging.getLogger(__name__)

COMBINES: tuple[str, ...] = ("attention", "class")
FEATURE_STRIDES: tuple[int, ...] = (32, 16)
CHECKPOINT_FORMAT = "chextriev-ham"
CHECKPOINT_VERSION = 1
LOSS_TERMS: tuple[str, ...] = ("anomaly", "cls", "remainder", "box", "bound", "union")


class HAMCheckpointError(ChextrievError):
    """A file that is not a HAM checkpoint written by :func:`save_ham`, or does not fit."""


@dataclass(frozen=True)
class HAMConfig:
    """Everything that builds a HAM network (saved in its checkpoint).

    Defaults follow the published code where it has a value (``lse_r`` 6, ``cam_w`` 100,
    ``cam_sigma`` 0.4, ``cam_loss_sigma`` 0.75, loss weights 0.01 / 1 / 0.5 / 0.001 / 0.001,
    head width 512); ``loss_remainder`` is GAIN's attention-mining weight scaled down (see the
    module docstring).
    """

    class_names: tuple[str, ...] = IMAGENOME_FINDINGS
    backbone: str = "resnet18"
    backbone_weights: str | None = None  # local state dict (see chextriev.model.weights), else random init from seed
    backbone_weights_format: str = "torchvision"  # torchvision | xrv (torchxrayvision DenseNet121, 1 channel)
    backbone_seed: int = 0
    train_backbone: bool = False
    feature_stride: int = 32  # 32: the trunk's last stage; 16: one stage less (finer map)
    image_size: int = 256
    head_width: int = 512
    attention_reduction: int = 8  # channel attention bottleneck of the foreground attention block
    dropout: float = 0.1
    lse_r: float = 6.0
    cam_w: float = 100.0
    cam_sigma: float = 0.4
    cam_loss_sigma: float = 0.75
    loss_anomaly: float = 0.01
    loss_cls: float = 1.0
    loss_remainder: float = 0.1
    loss_box: float = 0.5
    loss_bound: float = 0.001
    loss_union: float = 0.001
    combine: str = "attention"  # heatmap: class map gated by the abnormality attention, or "class"

    def __post_init__(self) -> None:
        if self.backbone not in CNN_BACKBONES:
            raise UnknownNameError("HAM backbone", self.backbone, CNN_BACKBONES)
        check_backbone(self.backbone, self.backbone_weights_format)
        if self.backbone_weights_format == "xrv" and self.image_size != XRV_INPUT_SIZE:
            raise ValueError(f"torchxrayvision DenseNet121 weights take {XRV_INPUT_SIZE} px inputs: set "
                             f"image_size={XRV_INPUT_SIZE} (got {self.image_size})")
        if self.feature_stride not in FEATURE_STRIDES:
            raise UnknownNameError("HAM feature stride", str(self.feature_stride), [str(s) for s in FEATURE_STRIDES])
        if self.combine not in COMBINES:
            raise UnknownNameError("HAM heatmap combination", self.combine, COMBINES)
        if not self.class_names:
            raise ValueError("HAM needs at least one class")
        if self.image_size < self.feature_stride:
            raise ValueError(f"image_size {self.image_size} is smaller than the feature stride {self.feature_stride}")

    @property
    def trunk_channels(self) -> int:
        return trunk_channels(self.backbone, self.feature_stride)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HAMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HAMCheckpointError(f"unknown HAM config field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "class_names" in values:
            values["class_names"] = tuple(values["class_names"])
        return cls(**values)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ForegroundAttention(nn.Module):
    """HAM's foreground attention block on ``(B, C, h, w)``, residual with a zero-initialised gain.

    Channel attention: the map is pooled with a learned spatial softmax (``conv1``), squeezed
    and excited (``C -> C/r -> C``, sigmoid) and multiplies ``conv2(x)``; position attention: a
    one-channel projection gated by a sigmoid of its own 3x3 convolution. Output
    ``x + gamma * attended`` (``gamma`` starts at 0, so training starts from the identity).
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool_logits = nn.Conv2d(channels, 1, 1, bias=False)
        self.excite = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                    nn.Linear(hidden, channels, bias=False))
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.project = nn.Conv2d(channels, 1, 1, bias=False)
        self.position = nn.Sequential(conv3x3(1, 1), nn.BatchNorm2d(1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weights = self.pool_logits(x).view(b, 1, h * w).softmax(dim=-1)  # (B, 1, hw)
        pooled = torch.einsum("bcn,bon->bc", x.reshape(b, c, h * w), weights)  # (B, C)
        channel = torch.sigmoid(self.excite(pooled))[:, :, None, None]
        attended = self.project(self.value(x) * channel)  # (B, 1, h, w)
        attended = attended * torch.sigmoid(self.position(attended))
        return x + self.gamma * attended


class ForegroundAttentionModule(nn.Module):
    """conv3x3 + BN -> :class:`ForegroundAttention` -> conv3x3 + BN: ``(B, F, h, w) -> (B, F/4, h, w)``."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 8):
        super().__init__()
        self.inward = nn.Sequential(conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels))
        self.attention = ForegroundAttention(out_channels, reduction)
        self.outward = nn.Sequential(conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outward(self.attention(self.inward(x)))


def lse_pool(x: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling ``(B, K, h, w) -> (B, K)``: between mean (r -> 0) and max (r -> inf)."""
    flat = x.flatten(2)
    return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(h, w)`` map of ``(..., h, w)`` scaled to [0, 1] (a flat map becomes 0)."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    span = flat.max(dim=-1, keepdim=True).values - lo
    return ((flat - lo) / span.clamp_min(1e-5)).view_as(maps)


def soft_mask(maps: torch.Tensor, w: float, sigma: float) -> torch.Tensor:
    """HAM's soft masking ``sigmoid(w (maps - sigma))``: near 1 above ``sigma``, near 0 below."""
    return torch.sigmoid(w * (maps - sigma))


@dataclass
class HAMOutput:
    """One forward pass: ``anomaly_logit (B,)``, ``class_logits (B, C)``, ``features X (B, K, h, w)``,
    ``anomaly_cam (B, 1, h, w)`` and ``class_cams (B, C, h, w)`` (ReLU CAMs, weights detached)."""

    anomaly_logit: torch.Tensor
    class_logits: torch.Tensor
    features: torch.Tensor
    anomaly_cam: torch.Tensor
    class_cams: torch.Tensor


class HAMNet(nn.Module):
    """The HAM network of ``config`` (see the module docstring)."""

    def __init__(self, config: HAMConfig):
        super().__init__()
        self.config = config
        trunk = build_trunk(config.backbone, config.backbone_weights, config.backbone_seed,
                            config.backbone_weights_format)
        self.trunk = trunk if config.feature_stride == 32 else trunk[:-1]
        if not config.train_backbone:
            freeze(self.trunk)
        channels = config.trunk_channels
        inner = channels // 4
        self.foreground = ForegroundAttentionModule(channels, inner, config.attention_reduction)
        self.head = nn.Sequential(conv3x3(channels + inner, config.head_width), nn.BatchNorm2d(config.head_width),
                                  nn.ReLU(), nn.Dropout2d(config.dropout))
        self.anomaly_fc = nn.Linear(config.head_width, 1, bias=False)
        self.class_fc = nn.Linear(config.head_width, config.num_classes, bias=False)
        for module in (self.foreground, self.head):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def train(self, mode: bool = True) -> HAMNet:
        super().train(mode)
        if not self.config.train_backbone:
            self.trunk.eval()  # frozen batch norm statistics
        return self

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> trunk map ``(B, F, S/stride, S/stride)``."""
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            out = self.trunk(to_channels_last(normalize(images, self.config.backbone_weights_format)))
        return out.contiguous()

    def forward_features(self, trunk_map: torch.Tensor) -> HAMOutput:
        """Everything after the trunk: ``(B, F, h, w)`` -> :class:`HAMOutput`."""
        features = self.head(torch.cat([trunk_map, self.foreground(trunk_map)], dim=1))
        pooled = lse_pool(features, self.config.lse_r)
        anomaly_cam = F.relu(torch.einsum("k,bkhw->bhw", self.anomaly_fc.weight[0].detach(), features))[:, None]
        class_cams = F.relu(torch.einsum("ck,bkhw->bchw", self.class_fc.weight.detach(), features))
        return HAMOutput(self.anomaly_fc(pooled)[:, 0], self.class_fc(pooled), features, anomaly_cam, class_cams)

    def forward(self, images: torch.Tensor) -> HAMOutput:
        return self.forward_features(self.trunk_features(images))

    def classify_remainder(self, features: torch.Tensor, keep: torch.Tensor, images: torch.Tensor,
                           classes: torch.Tensor) -> torch.Tensor:
        """Logit of class ``classes[p]`` for ``features[images[p]] * keep[p]`` (the feature map
        ``(B, K, h, w)`` with everything but ``keep (P, h, w)`` removed): ``(P,)``."""
        pooled = lse_pool(features[images] * keep[:, None], self.config.lse_r)  # (P, K)
        return (pooled * self.class_fc.weight[classes]).sum(dim=1)

    def cam_pipeline(self) -> CamPipeline:
        """This network split at ``X`` for :func:`chextriev.localization.heatmap` (CAM, Grad-CAM,
        Grad-CAM++ of HAM's own classifier: LSE pooling, then the linear class layer)."""

        def features(images: torch.Tensor) -> torch.Tensor:
            return self(images).features

        def head(feature_map: torch.Tensor) -> torch.Tensor:
            return self.class_fc(lse_pool(feature_map, self.config.lse_r))

        return CamPipeline(features, head, self.config.image_size, tuple(self.config.class_names))


def _any_finding(labels: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` labels with NaN -> ``(B,)`` "any finding": 1 if any is 1, NaN if none is 1 but
    some is masked, else 0."""
    positive = (labels == 1).any(dim=1)
    unknown = torch.isnan(labels).any(dim=1)
    out = positive.to(labels.dtype)
    return torch.where(~positive & unknown, torch.full_like(out, float("nan")), out)


def _ratio_outside(maps: torch.Tensor, bound: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(sum maps - sum min(maps, bound) * gate) / sum maps`` per map, over ``(..., h, w)``."""
    inside = (torch.minimum(maps, bound) * gate).flatten(-2).sum(-1)
    total = maps.flatten(-2).sum(-1)
    return (total - inside) / total.clamp_min(1e-5)


def box_masks(boxes: list[list[tuple[int, tuple[float, float, float, float]]]], num_classes: int,
              size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Box masks ``(B, C, S, S)`` float and ``has_box (B, C)`` bool from per-image lists of
    ``(class index, (x1, y1, x2, y2))`` in model-input pixels."""
    masks = torch.zeros(len(boxes), num_classes, size, size, device=device)
    has = torch.zeros(len(boxes), num_classes, dtype=torch.bool, device=device)
    for b, items in enumerate(boxes):
        for c, (x1, y1, x2, y2) in items:
            c0, r0 = max(math.floor(x1), 0), max(math.floor(y1), 0)
            c1, r1 = min(math.ceil(x2), size), min(math.ceil(y2), size)
            if c1 > c0 and r1 > r0:
                masks[b, c, r0:r1, c0:c1] = 1.0
                has[b, c] = True
    return masks, has


def ham_losses(model: HAMNet, output: HAMOutput, labels: torch.Tensor, masks: torch.Tensor | None = None,
               has_box: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """HAM's loss terms and their weighted ``total`` (see the module docstring).

    Args:
        output: the forward pass of a batch.
        labels: ``(B, C)`` 0/1, NaN = masked (left out of every term).
        masks: ``(B, C, S, S)`` box masks at input resolution, or ``None``.
        has_box: ``(B, C)`` bool: which (image, class) pairs carry boxes.
    Returns:
        ``{"anomaly", "cls", "remainder", "box", "bound", "union", "total"}`` scalar tensors
        (a term with no case in the batch is 0).
    """
    cfg = model.config
    zero = output.class_logits.sum() * 0.0
    labels = labels.to(output.class_logits.dtype)
    positive = labels == 1  # (B, C); NaN -> False
    anomaly_target = _any_finding(labels)
    terms = {
        "anomaly": masked_bce(output.anomaly_logit, anomaly_target),
        "cls": masked_bce(output.class_logits, labels),
    }
    # masked-out remainder: positives' class evidence must lie inside their own soft mask
    if cfg.loss_remainder > 0 and positive.any():
        b_idx, c_idx = torch.nonzero(positive, as_tuple=True)
        keep = 1.0 - soft_mask(minmax(output.class_cams[b_idx, c_idx]), cfg.cam_w, cfg.cam_sigma)
        terms["remainder"] = torch.sigmoid(model.classify_remainder(output.features, keep, b_idx, c_idx)).mean()
    else:
        terms["remainder"] = zero
    # boxes: the soft-masked class map at input resolution against the box mask
    if masks is not None and has_box is not None and has_box.any() and cfg.loss_box > 0:
        size = masks.shape[-1]
        b_idx, c_idx = torch.nonzero(has_box, as_tuple=True)
        cams = output.class_cams[b_idx, c_idx][:, None]  # (P, 1, h, w)
        up = F.interpolate(cams, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        refined = soft_mask(minmax(up), cfg.cam_w, cfg.cam_sigma)
        target = masks[b_idx, c_idx]
        per_class = []
        for c in torch.unique(c_idx):
            sel = c_idx == c
            err = (refined[sel] - target[sel]).pow(2).sum()
            per_class.append(err / (refined[sel].sum() + target[sel].sum()).clamp_min(1e-5))
        terms["box"] = torch.stack(per_class).mean()
    else:
        terms["box"] = zero
    # ordinal attention constraints on the raw maps
    anomaly_hidden = output.anomaly_cam[:, 0] * torch.nan_to_num(anomaly_target)[:, None, None]  # (B, h, w)
    class_hidden = output.class_cams * positive.to(labels.dtype)[:, :, None, None]  # (B, C, h, w)
    if positive.any():
        outside = _ratio_outside(class_hidden, anomaly_hidden[:, None],
                                 soft_mask(class_hidden, cfg.cam_w, cfg.cam_loss_sigma))  # (B, C)
        per_class = [outside[positive[:, c], c].mean() for c in range(labels.shape[1]) if positive[:, c].any()]
        terms["bound"] = torch.stack(per_class).mean()
        abnormal = positive.any(dim=1)
        union = class_hidden.max(dim=1).values
        uncovered = _ratio_outside(anomaly_hidden, union, soft_mask(anomaly_hidden, cfg.cam_w, cfg.cam_loss_sigma))
        terms["union"] = uncovered[abnormal].mean()
    else:
        terms["bound"] = terms["union"] = zero
    weights = {"anomaly": cfg.loss_anomaly, "cls": cfg.loss_cls, "remainder": cfg.loss_remainder,
               "box": cfg.loss_box, "bound": cfg.loss_bound, "union": cfg.loss_union}
    terms["total"] = sum(weights[k] * terms[k] for k in LOSS_TERMS)
    return terms


@dataclass
class LoadedHAM:
    """A HAM network ready for heatmaps: ``model`` (eval), ``config``, ``class_names``,
    ``image_size``, ``checkpoint_id`` (first 16 hex of the file's sha256), ``device``,
    ``training`` (what the checkpoint says about its training run)."""

    model: HAMNet
    config: HAMConfig
    checkpoint_id: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)


def save_ham(model: HAMNet, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint (config + weights + training notes) atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": model.config.to_dict(),
               "state_dict": model.state_dict(), "training": dict(training or {})}
    return atomic_path(path, lambda tmp: torch.save(payload, tmp))


def load_ham(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedHAM:
    """Rebuild a HAM network from a checkpoint of :func:`save_ham` alone.

    Raises:
        HAMCheckpointError: missing file, not a HAM checkpoint, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise HAMCheckpointError(f"HAM checkpoint {path} does not exist (train one with `chextriev train-ham`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise HAMCheckpointError(f"cannot read HAM checkpoint {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise HAMCheckpointError(
            f"{path} is not a HAM checkpoint (written by `chextriev train-ham`); for a retrieval "
            "checkpoint use the cam, gradcam or gradcampp methods"
        )
    config = HAMConfig.from_dict(data["config"])
    with weights_restored_later():  # the state dict holds the trunk: no weights file needed
        model = HAMNet(dataclasses.replace(config, backbone_weights=None))
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise HAMCheckpointError(f"{path}: weights do not fit its config: {exc}") from None
    device = torch.device(device)
    model.to(device).eval()
    digest = sha256_file(path)[:16]
    return LoadedHAM(model, config, digest, device, dict(data.get("training") or {}))


def _network(model_or_loaded: HAMNet | LoadedHAM) -> HAMNet:
    if isinstance(model_or_loaded, LoadedHAM):
        return model_or_loaded.model
    if isinstance(model_or_loaded, HAMNet):
        return model_or_loaded
    raise TypeError(f"expected a HAMNet or LoadedHAM, got {type(model_or_loaded).__name__}")


@torch.no_grad()
def ham_maps(model_or_loaded: HAMNet | LoadedHAM, image: np.ndarray) -> tuple[HAMOutput, np.ndarray]:
    """Forward one image ``(H, W)`` in [0, 1]; returns the output and the class probabilities ``(C,)``."""
    model = _network(model_or_loaded)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        batch = prepare_image(np.asarray(image, dtype=np.float32), model.config.image_size)[None].to(device)
        output = model(batch)
    finally:
        if was_training:
            model.train()
    return output, torch.sigmoid(output.class_logits[0]).cpu().numpy()


def ham_heatmap(model_or_loaded: HAMNet | LoadedHAM, image: np.ndarray, finding: str | int,
                combine: str | None = None) -> np.ndarray:
    """HAM's localization heatmap of ``finding`` for ``image (H, W)``: ``(H, W)`` float32 in [0, 1].

    Args:
        finding: a class name of the model, or its index.
        combine: ``"attention"`` (class map x soft-masked abnormality attention) or ``"class"``
            (class map only); default: the model's ``config.combine``.
    """
    model = _network(model_or_loaded)
    combine = combine or model.config.combine
    if combine not in COMBINES:
        raise UnknownNameError("HAM heatmap combination", combine, COMBINES)
    names = tuple(model.config.class_names)
    if isinstance(finding, (int, np.integer)) and not isinstance(finding, bool):
        if not 0 <= int(finding) < len(names):
            raise UnknownNameError("finding index", str(finding), [f"{i} ({n})" for i, n in enumerate(names)])
        index = int(finding)
    else:
        index = finding_index(names, str(finding))
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {array.shape}")
    output, _ = ham_maps(model, array)
    size = array.shape
    cam = F.interpolate(output.class_cams[:, index : index + 1].float(), size=size, mode="bilinear",
                        align_corners=False)[0, 0]
    heat = minmax(cam)
    if combine == "attention":
        attention = F.interpolate(output.anomaly_cam.float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        heat = minmax(heat * soft_mask(minmax(attention), model.config.cam_w, model.config.cam_sigma))
    if float(cam.max()) <= 0:
        return np.zeros(size, dtype=np.float32)
    return heat.clamp(0, 1).cpu().numpy().astype(np.float32)
