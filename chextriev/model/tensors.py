"""Tensor helpers shared by the model modules (no model classes here, so no import cycles).

* :func:`box_mask` — ``(B, 18, 4)`` boxes, NaN rows = missing -> ``(B, 18)`` bool present mask;
* :func:`masked_mean` — mean over the present nodes;
* :func:`adjacency_tensor` — the config's binary ``(18, 18)`` region graph as a tensor;
* :func:`clip_boxes` — boxes clipped to an image, too-small ones dropped (NaN rows): what the
  preprocessing, the encoders' inputs and the augmentation all use.
"""

from __future__ import annotations

import numpy as np
import torch

from chextriev.model.adjacency import anatomical_adjacency


def box_mask(boxes: torch.Tensor) -> torch.Tensor:
    """``(B, 18, 4)`` boxes (NaN = missing) -> ``(B, 18)`` bool, True where present."""
    return ~torch.isnan(boxes).any(dim=-1)


def masked_mean(nodes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, N, W)`` mean over present nodes ``mask (B, N)`` -> ``(B, W)`` (zeros if none)."""
    weights = mask.to(nodes.dtype).unsqueeze(-1)
    return (nodes * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def adjacency_tensor(adjacency) -> torch.Tensor:
    """``(18, 18)`` long 0/1 tensor of ``adjacency`` (nested tuples, as in ``ModelConfig``),
    or of the anatomical default when it is ``None``."""
    matrix = np.asarray(adjacency) if adjacency is not None else anatomical_adjacency()
    return torch.as_tensor(matrix, dtype=torch.long)


#: Boxes narrower or lower than this many pixels after a crop or an augmentation are dropped.
MIN_BOX_SIDE = 2.0


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int], min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """``(N, 4)`` x1 y1 x2 y2 clipped to an ``(H, W)`` image; rows left narrower or lower than
    ``min_side`` (or NaN) become NaN rows (the region is then missing, masked downstream)."""
    height, width = shape[:2]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    with np.errstate(invalid="ignore"):
        bad = ~((out[:, 2] - out[:, 0] >= min_side) & (out[:, 3] - out[:, 1] >= min_side))
    out[bad] = np.nan
    return out
