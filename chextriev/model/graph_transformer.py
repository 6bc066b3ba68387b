"""One configurable graph transformer over the 18 region nodes (SPEC section 4).

Read top to bottom: edge sources, gated residual, attention with edges, feed-forward, layer,
model. Shapes: ``B`` batch, ``N = 18`` nodes, ``W`` width, ``H`` heads, ``D`` head_dim,
``I = H * D`` the attention inner width (8 x 64 = 512 as published).

As in the published code (``graph_transformer_pytorch.py`` of CheXtriev):

* ``edges``: every edge type goes through one learned table of two edge vectors ``(2, W)``
  (the published ``adj_emb``, an ``nn.Embedding``: standard-normal init) selected by a binary
  18x18 matrix: ``adjacency`` selects with the region adjacency; ``uniform`` with the all-ones
  matrix (one learned vector for every pair: the published ``fully_connected``); ``learned``
  adds an 18x18 grid of learned vectors (xavier-uniform init, as published) to the uniform
  vector. The published grid was a buffer and never trained: here it is an ``nn.Parameter``.
  ``none``: no edge terms. Each layer maps the edge vectors ``e_ij (W,)`` with ONE learned
  linear map with bias (``W -> I``) and adds the result to both the key and the value of pair
  ``(i, j)``.
* ``abs_pos``: one learned embedding per region (standard-normal init), added to the normed
  node features in each layer.
* ``gated_residual``: ``g = sigmoid(W [x; r; x - r])``, output ``g * x + (1 - g) * r``.
* ``residual``: ``layer`` (r = this sublayer's input) or ``global`` (r = the input features h0).
* readout: ``h0 + h1 + ... + hL`` per node (the published ``retrieved``).
* missing nodes are masked as keys in attention and zero in both outputs (the published code
  had no missing nodes: it dropped such images).
"""

from __future__ import annotations

import torch
from torch import nn

from chextriev.model.config import ModelConfig
from chextriev.model.tensors import adjacency_tensor
from chextriev.vocab import NUM_REGIONS


class EdgeVectors(nn.Module):
    """Edge vectors ``(N, N, W)`` for the configured edge type, or ``None`` for ``edges="none"``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.edges
        if self.kind == "none":
            return
        width = config.width
        if self.kind == "adjacency":
            selector = adjacency_tensor(config.adjacency)
        else:  # uniform and learned: the published fully connected graph
            selector = torch.ones(NUM_REGIONS, NUM_REGIONS, dtype=torch.long)
        self.register_buffer("selector", selector, persistent=True)
        self.table = nn.Parameter(torch.randn(2, width))  # nn.Embedding(2, W) init: N(0, 1)
        if self.kind == "learned":
            self.grid = nn.Parameter(torch.empty(NUM_REGIONS, NUM_REGIONS, width))
            nn.init.xavier_uniform_(self.grid)

    def forward(self) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        edges = self.table[self.selector]
        return edges + self.grid if self.kind == "learned" else edges


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
    """Multi-head attention over all node pairs, the mapped edge vector added to key and value.

    ``logit_hij = q_hi . (k_hj + e_hij) / sqrt(D)``, ``out_hi = sum_j a_hij (v_hj + e_hij)``,
    ``e = edges_to_kv(edge_ij)``; q, k, v and the edge map are linear with bias, as published.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        inner = config.inner_width
        self.to_q = nn.Linear(config.width, inner)
        self.to_kv = nn.Linear(config.width, 2 * inner)
        self.edges_to_kv = nn.Linear(config.width, inner) if config.edges != "none" else None
        self.to_out = nn.Linear(inner, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, N, W)``, ``edges (N, N, W) | None``, ``mask (B, N)`` -> ``(B, N, W)``."""
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        q = self.to_q(x).view(b, n, h, d)
        k, v = self.to_kv(x).view(b, n, 2, h, d).unbind(dim=2)  # each (B, N, H, D)
        logits = torch.einsum("bihd,bjhd->bhij", q, k)
        e = None
        if self.edges_to_kv is not None and edges is not None:
            e = self.edges_to_kv(edges).view(n, n, h, d)  # (N, N, H, D), shared by keys and values
            logits = logits + torch.einsum("bihd,ijhd->bhij", q, e)
        logits = logits / d**0.5
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        attention = self.dropout(logits.softmax(dim=-1))  # (B, H, N, N)
        out = torch.einsum("bhij,bjhd->bihd", attention, v)
        if e is not None:
            out = out + torch.einsum("bhij,ijhd->bihd", attention, e)
        return self.to_out(out.reshape(b, n, h * d))


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
    """``h0 (B, 18, W)``, ``mask (B, 18)`` -> ``(last, readout)``, both ``(B, 18, W)``.

    ``last`` is the last layer's node features ``hL`` (what the heads classify, as in the
    published training step); ``readout`` the multi-level ``h0 + h1 + ... + hL`` (what the
    retrieval embedding averages, as in the published retrieval pass). ``graph="none"`` (V0)
    gives ``(h0, h0)``. Missing nodes are zero in both.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.enabled = config.graph == "transformer"
        if not self.enabled:
            self.layers = nn.ModuleList()
            return
        self.edges = EdgeVectors(config)
        # the published nn.Embedding of positions: standard-normal init, shared by every layer
        self.position = nn.Parameter(torch.randn(NUM_REGIONS, config.width)) if config.abs_pos else None
        self.layers = nn.ModuleList(GraphTransformerLayer(config) for _ in range(config.num_layers))

    def forward(self, h0: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            return h0, h0
        edges = self.edges()
        readout, x = h0, h0
        for layer in self.layers:
            x = layer(x, h0, edges, mask, self.position)
            readout = readout + x
        present = mask.unsqueeze(-1).to(readout.dtype)
        return x * present, readout * present
