"""One configurable graph transformer over the 18 region nodes (SPEC section 4).

Read top to bottom: edge sources, gated residual, attention with edges, feed-forward, layer,
model. Shapes: ``B`` batch, ``N = 18`` nodes, ``W`` width, ``H`` heads, ``D = W / H``.

Options (each changes the computation; tests/model/test_model_variants.py checks):

* ``edges``: ``none``; ``adjacency`` (the binary 18x18 matrix selects one of two learned edge
  vectors); ``uniform`` (one learned vector for every pair); ``learned`` (an 18x18 grid of
  learned vectors — an ``nn.Parameter``, so it trains, unlike the published buffer). Edge
  vectors ``e_ij (W,)`` are mapped by per-layer learned linear maps and added to the key and
  the value of pair ``(i, j)``.
* ``abs_pos``: a learned embedding per region added to the normed node features in each layer.
* ``gated_residual``: ``g = sigmoid(W [x; r; x - r])``, output ``g * x + (1 - g) * r``.
* ``residual``: ``layer`` (r = this sublayer's input) or ``global`` (r = the input features h0).
* readout: ``h0 + h1 + ... + hL`` per node; graph readout = mean over present nodes.
* missing nodes are masked as keys in attention and excluded from the readout.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from chextriev.model.adjacency import anatomical_adjacency
from chextriev.model.config import ModelConfig
from chextriev.vocab import NUM_REGIONS


def masked_mean(nodes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, N, W)`` mean over present nodes ``mask (B, N)`` -> ``(B, W)`` (zeros if none)."""
    weights = mask.to(nodes.dtype).unsqueeze(-1)
    return (nodes * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def adjacency_tensor(config: ModelConfig) -> torch.Tensor:
    """``(18, 18)`` long 0/1 adjacency of ``config`` (the anatomical default when unset)."""
    matrix = np.asarray(config.adjacency) if config.adjacency is not None else anatomical_adjacency()
    return torch.as_tensor(matrix, dtype=torch.long)


class EdgeVectors(nn.Module):
    """Edge vectors ``(N, N, W)`` for the configured edge type, or ``None`` for ``edges="none"``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.edges
        width = config.width
        if self.kind == "adjacency":
            self.register_buffer("adjacency", adjacency_tensor(config), persistent=True)
            self.table = nn.Parameter(torch.randn(2, width) * 0.02)
        elif self.kind == "uniform":
            self.vector = nn.Parameter(torch.randn(width) * 0.02)
        elif self.kind == "learned":
            self.grid = nn.Parameter(torch.randn(NUM_REGIONS, NUM_REGIONS, width) * 0.02)

    def forward(self) -> torch.Tensor | None:
        if self.kind == "adjacency":
            return self.table[self.adjacency]
        if self.kind == "uniform":
            return self.vector.expand(NUM_REGIONS, NUM_REGIONS, -1)
        if self.kind == "learned":
            return self.grid
        return None


class Residual(nn.Module):
    """Plain (``x + r``) or gated (``g * x + (1 - g) * r``, ``g = sigmoid(W [x; r; x - r])``)."""

    def __init__(self, width: int, gated: bool):
        super().__init__()
        self.gate = nn.Linear(3 * width, 1, bias=False) if gated else None

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return x + r
        g = torch.sigmoid(self.gate(torch.cat([x, r, x - r], dim=-1)))
        return g * x + (1 - g) * r


class EdgeAttention(nn.Module):
    """Multi-head attention over all node pairs with edge vectors added to keys and values."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads = config.heads
        self.to_qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.out = nn.Linear(config.width, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.with_edges = config.edges != "none"
        if self.with_edges:
            self.edge_key = nn.Linear(config.width, config.width, bias=False)
            self.edge_value = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, N, W)``, ``edges (N, N, W) | None``, ``mask (B, N)`` -> ``(B, N, W)``."""
        b, n, w = x.shape
        h, d = self.heads, w // self.heads
        q, k, v = self.to_qkv(x).view(b, n, 3, h, d).unbind(dim=2)  # each (B, N, H, D)
        logits = torch.einsum("bihd,bjhd->bhij", q, k)
        if self.with_edges and edges is not None:
            ek = self.edge_key(edges).view(n, n, h, d)  # (N, N, H, D)
            ev = self.edge_value(edges).view(n, n, h, d)
            logits = logits + torch.einsum("bihd,ijhd->bhij", q, ek)
        logits = logits / d**0.5
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        attention = self.dropout(logits.softmax(dim=-1))  # (B, H, N, N)
        out = torch.einsum("bhij,bjhd->bihd", attention, v)
        if self.with_edges and edges is not None:
            out = out + torch.einsum("bhij,ijhd->bihd", attention, ev)
        return self.out(out.reshape(b, n, w))


class GraphTransformerLayer(nn.Module):
    """Pre-LayerNorm attention and feed-forward, each with a (gated) residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.width)
        self.attention = EdgeAttention(config)
        self.residual_attention = Residual(config.width, config.gated_residual)
        self.norm_ff = nn.LayerNorm(config.width)
        self.ff = nn.Sequential(
            nn.Linear(config.width, config.ff_width), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.ff_width, config.width),
        )
        self.residual_ff = Residual(config.width, config.gated_residual)
        self.global_residual = config.residual == "global"

    def forward(self, x: torch.Tensor, h0: torch.Tensor, edges: torch.Tensor | None,
                mask: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        normed = self.norm_attention(x)
        if position is not None:
            normed = normed + position
        x = self.residual_attention(self.attention(normed, edges, mask), h0 if self.global_residual else x)
        return self.residual_ff(self.ff(self.norm_ff(x)), h0 if self.global_residual else x)


class GraphTransformer(nn.Module):
    """``h0 (B, 18, W)``, ``mask (B, 18)`` -> per-node multi-level readout ``(B, 18, W)``.

    ``graph="none"`` (V0) returns ``h0`` itself (the mean of node features is then the graph
    readout). Missing nodes are zero in the output.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.enabled = config.graph == "transformer"
        if not self.enabled:
            self.layers = nn.ModuleList()
            return
        self.edges = EdgeVectors(config)
        self.position = nn.Parameter(torch.randn(NUM_REGIONS, config.width) * 0.02) if config.abs_pos else None
        self.layers = nn.ModuleList(GraphTransformerLayer(config) for _ in range(config.num_layers))

    def forward(self, h0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return h0
        edges = self.edges()
        readout, x = h0, h0
        for layer in self.layers:
            x = layer(x, h0, edges, mask, self.position)
            readout = readout + x
        return readout * mask.unsqueeze(-1).to(readout.dtype)
