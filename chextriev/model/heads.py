"""Heads and losses shared by the region models.

* :class:`Heads`: LayerNorm + Linear(width -> C) per node (node logits ``(B, 18, C)``) and on the
  mean of the present nodes (graph logits ``(B, C)``).
* :func:`masked_bce`: BCE-with-logits ignoring NaN targets and masked entries.
* :func:`graph_node_loss`: ``gi * BCE(graph) + (1 - gi) * BCE(node)``, node BCE over present
  regions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chextriev.model.graph_transformer import masked_mean


class Heads(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.node = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))
        self.graph = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))

    def forward(self, nodes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``nodes (B, 18, W)``, ``mask (B, 18)`` -> node logits ``(B, 18, C)``,
        graph logits ``(B, C)``, graph readout ``(B, W)`` (mean over present nodes)."""
        readout = masked_mean(nodes, mask)
        return self.node(nodes), self.graph(readout), readout


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits over entries whose target is not NaN and (optionally) ``mask`` is True.

    ``mask`` broadcasts against ``targets`` (e.g. ``(B, 18, 1)`` for node targets ``(B, 18, C)``).
    Returns 0 (with a graph) when no entry counts.
    """
    valid = ~torch.isnan(targets)
    if mask is not None:
        valid = valid & mask.bool()
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(targets.float()), reduction="none"
    )
    weights = valid.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def graph_node_loss(graph_logits: torch.Tensor, node_logits: torch.Tensor, labels: torch.Tensor,
                    region_labels: torch.Tensor, mask: torch.Tensor, graph_importance: float) -> torch.Tensor:
    """``gi * BCE(graph_logits (B,C), labels (B,C)) + (1 - gi) * BCE(node_logits (B,18,C),
    region_labels (B,18,C))`` with node terms masked on missing regions ``mask (B, 18)``."""
    gi = float(graph_importance)
    loss = graph_logits.new_zeros((), dtype=torch.float32)
    if gi > 0:
        loss = loss + gi * masked_bce(graph_logits, labels)
    if gi < 1:
        loss = loss + (1 - gi) * masked_bce(node_logits, region_labels, mask.unsqueeze(-1))
    return loss
