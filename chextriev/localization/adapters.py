"""Split a model into ``features(images) -> feature map`` and ``head(feature map) -> image
logits`` for class-activation maps.

* graph variants V0..V6 and AnaXNet in ``roi`` mode: the backbone feature map of the whole
  image; the head is RoIAlign of the region boxes, projection, graph and heads, read out
  through ``model.image_logits`` (the shared head on the mean of the nodes, or the largest
  region logit for anatomy-supervised V0-anatomy and V4, whose loss has region targets only);
* the global ResNet baselines: the backbone feature map; the head is the optional attention
  map, the pooling (avg, max, lse or PCAM), the optional projection and the classifier;
* ATH: its network's last multi-channel feature map (``ATH.feature_map``); the head is the
  rest of the network up to the class logits (``ATH.classify_feature_map``).

``crop`` mode models run the backbone on each region crop, never on the whole image, so they
have no whole-image feature map: :class:`CamUnsupportedError` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chextriev.errors import ChextrievError


class CamUnsupportedError(ChextrievError):
    """The model has no whole-image feature map to explain (e.g. ``crop`` mode)."""


@dataclass
class CamPipeline:
    """A model split at its feature map, for one image's boxes.

    Attributes:
        features: ``(1, 1, S, S)`` image in [0, 1] -> feature map ``(1, K, h, w)``.
        head: feature map ``(1, K, h, w)`` -> image logits ``(1, C)``.
        image_size: ``S``, the square model input.
        class_names: the ``C`` finding names.
        linear_weights: ``(C, K)`` when ``head`` is exactly a linear classifier on the
            average-pooled feature map (plain CAM uses them); ``None`` otherwise.
    """

    features: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    image_size: int
    class_names: tuple[str, ...]
    linear_weights: torch.Tensor | None = None


def _region_pipeline(model: nn.Module, boxes: torch.Tensor | None) -> CamPipeline:
    from chextriev.model.region_features import box_mask

    config = model.config
    if config.feature_mode != "roi":
        raise CamUnsupportedError(
            f"heatmaps need a whole-image feature map; this model uses feature_mode={config.feature_mode!r}"
            " (per-region crops). Use a 'roi' model, or the node probabilities for anatomy-level localization."
        )
    if boxes is None:
        raise ValueError("region models need the (1, 18, 4) region boxes to compute a heatmap")
    mask = box_mask(boxes)

    def head(feature_map: torch.Tensor) -> torch.Tensor:
        pooled = model.regions.pool_regions(feature_map, boxes)
        return model.image_logits(model.forward_features(pooled, mask))

    return CamPipeline(model.regions.feature_map, head, config.image_size, tuple(config.class_names))


def _global_pipeline(model: nn.Module) -> CamPipeline:
    config = model.config

    # the rest of the network after the trunk: attention map, pooling, head
    return CamPipeline(model.features.feature_map, model.classify_feature_map, config.image_size,
                       tuple(config.class_names))


def _ath_pipeline(model: nn.Module) -> CamPipeline:
    config = model.config
    # the network split by the model itself: its last multi-channel map, then the rest
    return CamPipeline(model.feature_map, model.classify_feature_map, config.image_size, tuple(config.class_names))


def cam_pipeline(model: nn.Module, boxes: torch.Tensor | None = None) -> CamPipeline:
    """The :class:`CamPipeline` of a :mod:`chextriev.model` network (``boxes (1, 18, 4)`` in
    model-input pixels for region models; ignored by global ones)."""
    kind = getattr(getattr(model, "config", None), "kind", None)
    if kind in ("graph", "anaxnet") and hasattr(model, "regions"):
        return _region_pipeline(model, boxes)
    if kind == "global" and hasattr(model, "features"):
        return _global_pipeline(model)
    if kind == "ath" and hasattr(model, "feature_map"):
        return _ath_pipeline(model)
    raise CamUnsupportedError(
        f"no heatmap adapter for {type(model).__name__} (kind {kind!r}); pass a CamPipeline "
        "(features: image -> feature map, head: feature map -> image logits) instead"
    )
