"""Tensor helpers shared by the model modules (no model classes here, so no import cycles).

* :func:`box_mask` — ``(B, 18, 4)`` boxes, NaN rows = missing -> ``(B, 18)`` bool present mask;
* :func:`masked_mean` — mean over the present nodes;
* :func:`adjacency_tensor` — the config's binary ``(18, 18)`` region graph as a tensor.
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
