"""PCAM heatmaps: a PCAM-pooled classifier's own probability map of a finding.

A global classifier trained with ``--pooling pcam`` (:func:`chextriev.model.pooling.pcam_pool`,
Ye et al. 2020) pools the feature map of each class with that class's probability map
``p_c = sigmoid(w_c . x(h, w) + b_c)``; the same map is its localization heatmap (no gradient,
no separate explainer). :func:`pcam_heatmap` upsamples it bilinearly to the image's own
``(H, W)`` and min-max scales it to ``[0, 1]``, as the CAM family's maps are
(:func:`chextriev.localization.cam.heatmap`), so the same box and mask rules score all of them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.localization.adapters import CamUnsupportedError
from chextriev.precision import autocast, weights_precision
from chextriev.vocab import class_index


def pcam_heatmap(model_or_loaded, image: np.ndarray, finding: str | int = 0) -> np.ndarray:
    """The PCAM probability map of ``finding`` for ``image (H, W)`` in [0, 1]: ``(H, W)`` float32
    in ``[0, 1]`` (min-max scaled; all zeros for a flat map).

    ``model_or_loaded``: a :class:`chextriev.checkpoint.LoadedModel` or a global classifier
    whose ``config.pooling`` is ``"pcam"`` (else :class:`CamUnsupportedError` says so).
    """
    from chextriev.model.preprocess import prepare_image

    loaded = model_or_loaded if hasattr(model_or_loaded, "box_provider") and hasattr(model_or_loaded, "model") else None
    model = loaded.model if loaded is not None else model_or_loaded
    config = getattr(model, "config", None)
    if getattr(config, "kind", None) != "global" or config.pooling != "pcam":
        raise CamUnsupportedError(
            "PCAM heatmaps come from a global classifier trained with --pooling pcam; this model "
            f"({getattr(config, 'kind', type(model).__name__)}, pooling {getattr(config, 'pooling', None)!r}) "
            "has none: use --cam-method cam, gradcam or gradcampp")
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {array.shape}")
    names = tuple(loaded.class_names) if loaded is not None else tuple(config.class_names)
    index = class_index(names, finding)
    precision = getattr(loaded, "precision", None) or weights_precision(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        images = prepare_image(array, config.image_size)[None].to(device)
        with torch.no_grad(), autocast(precision, device):
            maps = model.probability_maps(model.features.feature_map(images))
    finally:
        model.train(was_training)
    up = F.interpolate(maps[:, index:index + 1].float(), size=array.shape, mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    peak = float(up.max())
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros(array.shape, dtype=np.float32)
    return (up / peak).clamp(0, 1).cpu().numpy().astype(np.float32)
