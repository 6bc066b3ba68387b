"""The classification head and losses shared by the region models.

* :class:`Head`: ONE LayerNorm + Linear(width -> C), as published (the ``fc`` of the published
  model), applied to every node (node logits ``(B, 18, C)``: which region holds which
  finding) and to the mean of the present nodes (graph logits ``(B, C)``). Because the same
  layer classifies both, image-level supervision (``gi = 1``) also trains the per-region
  classifier: weakly supervised anatomy localization.
* :func:`masked_bce`: BCE-with-logits ignoring NaN targets and masked entries.
* :func:`graph_node_loss`: ``gi * BCE(graph) + (1 - gi) * BCE(node)``, node BCE over present
  regions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chextriev.model.tensors import masked_mean


class Head(nn.Module):
    """LayerNorm + Linear(width -> C), shared by the node and the graph logits."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` -> ``(..., C)`` logits."""
        return self.linear(self.norm(features))

    def node_and_graph(self, nodes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``nodes (B, 18, W)``, ``mask (B, 18)`` -> node logits ``(B, 18, C)`` and graph logits
        ``(B, C)`` (the head on the mean of the present nodes)."""
        return self(nodes), self(masked_mean(nodes, mask))


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
