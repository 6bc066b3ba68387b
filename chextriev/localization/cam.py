"""CAM, Grad-CAM and Grad-CAM++ heatmaps for one finding, from the graph (image) logits.

>>> heat = heatmap(loaded, image, None, "pleural effusion", method="gradcam")  # doctest: +SKIP
>>> heat.shape == image.shape, float(heat.max()) <= 1.0                        # doctest: +SKIP
>>> boxes = heatmap_to_boxes(heat, threshold=0.5)                              # doctest: +SKIP

The model is split at its feature map ``A (K, h, w)`` (see :mod:`chextriev.localization.adapters`)
and the logit ``y`` of the finding is differentiated with respect to ``A``:

* ``gradcam`` (Selvaraju et al.): ``ReLU(sum_k mean_ij(dy/dA_kij) A_k)``;
* ``gradcampp`` (Chattopadhay et al.): per-pixel weights
  ``a = g^2 / (2 g^2 + sum_ij A_k * g^3)`` on the positive gradients ``g``;
* ``cam`` (Zhou et al.): ``sum_k w_k A_k`` with the classifier weights ``w`` when the head is
  exactly linear on the pooled map; otherwise ``w_k = dy/d(mean_ij A_k)``, the head
  linearised at this image (exact for a linear head), min-max normalised (no ReLU).

Maps are upsampled bilinearly to the image's own ``(H, W)`` and min-max scaled to ``[0, 1]``
(a flat map, e.g. no positive evidence for Grad-CAM, gives all zeros).

Vision transformers (the foundation encoders of :mod:`chextriev.model.encoders`): the map ``A``
is the final patch-token grid ``(D, S/p, S/p)``, the tensor the region features are pooled from,
and the same Grad-CAM applies: the gradient of the finding's logit with respect to each token,
averaged per channel, weighting the tokens. It explains the trained head's decision through the
region pooling and the graph (what the viewer needs); attention rollout would show where the
frozen encoder looks, whatever the finding, and text-region similarity needs a text query
(the CLIP encoders' ``LoadedModel.text_encoder``). The token map is carried back through the
encoder's own resize / crop / letterbox to the image's pixels (margins a centre crop cut get 0).

Precision follows the model: a bf16 :class:`chextriev.checkpoint.LoadedModel` (or a network
whose weights :func:`chextriev.precision.prepare_model` stored in bf16) runs the feature map
and the head under bf16 autocast; the gradient and the map are computed in float32.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chextriev.errors import UnknownNameError
from chextriev.localization.adapters import CamPipeline, CamUnsupportedError, cam_pipeline
from chextriev.localization.overlay import overlay_png
from chextriev.localization.regions import heatmap_mask, heatmap_to_boxes
from chextriev.precision import autocast, weights_precision
from chextriev.vocab import class_index

log = logging.getLogger(__name__)

#: the gradient methods, for every model with a feature map
METHODS = ("gradcam", "gradcampp", "cam")
#: what :func:`heatmap` accepts: the above, and ``pcam``, the probability map of a classifier
#: trained with PCAM pooling (:mod:`chextriev.localization.pcam`; that model only)
HEATMAP_METHODS = (*METHODS, "pcam")

__all__ = [
    "HEATMAP_METHODS",
    "METHODS",
    "CamPipeline",
    "CamUnsupportedError",
    "class_index",
    "feature_cam",
    "heatmap",
    "heatmap_mask",
    "heatmap_to_boxes",
    "overlay_png",
    "own_method",
]


def feature_cam(
    feature_map: torch.Tensor, gradient: torch.Tensor, method: str, linear_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The raw map ``(h, w)`` from ``feature_map`` and ``gradient`` ``(K, h, w)`` (unnormalised)."""
    if method == "gradcam":
        weights = gradient.mean(dim=(1, 2))
        return F.relu(torch.einsum("k,khw->hw", weights, feature_map))
    if method == "gradcampp":
        g2, g3 = gradient.pow(2), gradient.pow(3)
        denominator = 2 * g2 + feature_map.sum(dim=(1, 2), keepdim=True) * g3
        alpha = torch.where(gradient != 0, g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(g2))
        weights = (alpha * F.relu(gradient)).sum(dim=(1, 2))
        return F.relu(torch.einsum("k,khw->hw", weights, feature_map))
    if method == "cam":
        weights = linear_weights if linear_weights is not None else gradient.sum(dim=(1, 2))
        return torch.einsum("k,khw->hw", weights.to(feature_map), feature_map)
    raise UnknownNameError("CAM method", method, METHODS)


def _normalise(raw: torch.Tensor, size: tuple[int, int], method: str, spec=None) -> np.ndarray:
    if spec is None:
        up = F.interpolate(raw[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    else:  # an encoder's input is a resize / crop / letterbox of the image: map each pixel through it
        up = _through_input(raw.float(), size, spec)
    if method != "cam":
        up = F.relu(up)
    up = up - up.min()
    peak = float(up.max())
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(size, dtype=np.float32)
    return (up / peak).clamp(0, 1).cpu().numpy().astype(np.float32)


def _through_input(raw: torch.Tensor, size: tuple[int, int], spec) -> torch.Tensor:
    """A map ``(h, w)`` over an encoder's ``S x S`` input -> ``(H, W)`` over the original image:
    each original pixel centre is carried through the input preparation's affine map
    (:meth:`~chextriev.model.encoders.inputs.InputSpec.box_transform`) and sampled bilinearly;
    pixels the input does not show (a centre crop's margins) get 0."""
    height, width = size
    sx, sy, ox, oy = spec.box_transform(size)
    side = float(spec.side)
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * sx + ox) / side * 2 - 1
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * sy + oy) / side * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].to(raw.device)
    return F.grid_sample(raw[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def _resolve(model_or_loaded, image: np.ndarray, boxes: np.ndarray | None):
    """-> (module or None, pipeline builder(boxes tensor) -> CamPipeline, boxes tensor, device)."""
    from chextriev.model.preprocess import scale_boxes

    loaded = model_or_loaded if hasattr(model_or_loaded, "box_provider") and hasattr(model_or_loaded, "model") else None
    if isinstance(model_or_loaded, CamPipeline):
        return None, model_or_loaded, None
    model: nn.Module = loaded.model if loaded is not None else model_or_loaded
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a LoadedModel, a chextriev model or a CamPipeline, got {type(model_or_loaded).__name__}")
    config = model.config
    device = next(model.parameters()).device
    boxes_tensor = None
    if config.has_regions:
        if boxes is None:
            if loaded is not None:
                (boxes, source), = loaded.box_provider.boxes_for([image])
            else:
                from chextriev.anatomy.atlas import Atlas

                boxes, source = Atlas.default().boxes_for(*image.shape[:2]), "atlas"
            log.debug("heatmap: region boxes from %s", source)
        if config.is_encoder:  # its own resize / crop / letterbox
            scaled = model.input_boxes(np.asarray(boxes, dtype=np.float32), image.shape[:2])
        else:
            scaled = scale_boxes(np.asarray(boxes, dtype=np.float32), image.shape[:2], config.image_size)
        boxes_tensor = torch.from_numpy(np.asarray(scaled, np.float32))[None].to(device)
    pipeline = cam_pipeline(model, boxes_tensor)
    if loaded is not None:
        pipeline.class_names = tuple(loaded.class_names)
        pipeline.image_size = int(loaded.image_size)
    return model, pipeline, device


def own_method(model_or_loaded) -> str:
    """The heatmap method a model is best explained by, what the viewer shows: ``"pcam"`` for a
    global classifier trained with ``--pooling pcam`` (its own probability map is its
    localization, scored in the localization table), else ``"gradcam"``."""
    model = getattr(model_or_loaded, "model", model_or_loaded)
    config = getattr(model, "config", None)
    if getattr(config, "kind", None) == "global" and getattr(config, "pooling", None) == "pcam":
        return "pcam"
    return "gradcam"


def heatmap(
    model_or_loaded,
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    finding: str | int = 0,
    method: str = "gradcam",
) -> np.ndarray:
    """Heatmap of ``finding`` for one ``image``.

    Args:
        model_or_loaded: a :class:`chextriev.checkpoint.LoadedModel`, a :mod:`chextriev.model`
            network, or a :class:`CamPipeline`.
        image: ``(H, W)`` float32 in [0, 1].
        boxes: ``(18, 4)`` region boxes in the image's pixels, or ``None`` (the loaded model's
            box provider, else the default atlas). Ignored by global models.
        finding: a finding name of the model's class list, or its index.
        method: ``"gradcam"``, ``"gradcampp"``, ``"cam"``, or ``"pcam"`` (a global classifier
            trained with ``--pooling pcam``: its own probability map, no gradient).
    Returns:
        ``(H, W)`` float32 in ``[0, 1]`` (all zeros when the finding has no positive evidence).
    """
    if method not in HEATMAP_METHODS:
        raise UnknownNameError("CAM method", method, HEATMAP_METHODS)
    if method == "pcam":
        from chextriev.localization.pcam import pcam_heatmap

        return pcam_heatmap(model_or_loaded, image, finding)
    from chextriev.model.preprocess import prepare_image

    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {array.shape}")
    model, pipeline, device = _resolve(model_or_loaded, array, boxes)
    precision = getattr(model_or_loaded, "precision", None) or (
        weights_precision(model) if model is not None else "fp32")
    index = class_index(pipeline.class_names, finding)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    config = getattr(model, "config", None)
    spec = None
    try:
        if config is not None and config.is_encoder:
            from chextriev.model.preprocess import encoder_input

            spec = encoder_input(config)
            images = spec.prepare(array)[None]
        else:
            images = prepare_image(array, pipeline.image_size)[None]
        if device is not None:
            images = images.to(device)
        with torch.no_grad(), autocast(precision, images.device):
            feature_map = pipeline.features(images)
        with torch.enable_grad():
            feature_map = feature_map.detach().float().requires_grad_(True)
            with autocast(precision, images.device):
                logits = pipeline.head(feature_map)
            score = logits[0, index].float()
            (gradient,) = torch.autograd.grad(score, feature_map, allow_unused=True)
    finally:
        if model is not None and was_training:
            model.train()
    if gradient is None:
        gradient = torch.zeros_like(feature_map)
    weights = pipeline.linear_weights[index] if (method == "cam" and pipeline.linear_weights is not None) else None
    raw = feature_cam(feature_map.detach()[0], gradient[0], method, weights)
    return _normalise(raw, array.shape, method, spec)
