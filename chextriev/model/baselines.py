"""Baselines of the published comparison, behind the same interface as V0..V6.

* :class:`GlobalResNet` — whole image, backbone feature pooled to ``(B, F)`` (2048 for
  ResNet50; ``pooling`` avg (published), max, lse or pcam, optionally after an ``attention``
  map: :mod:`chextriev.model.pooling`). ``global_embedding="backbone"`` (variant ``resnet50``,
  as published): the frozen pooled feature is the embedding and a trained LayerNorm + Linear
  head classifies it; ``"projection"`` (``resnet50-projected``): a trained projection
  ``F -> width -> ReLU -> width`` is the embedding and the head classifies that.
* :class:`ATH` — attention-based triplet hashing on the whole image (``image_size``, 256 as
  published): three residual blocks, CBAM-style spatial attention (sigmoid of a 3x3
  convolution over the channel-wise mean and max) after the first, a hash layer without tanh
  giving the ``code_dim`` (32) code and a class layer in parallel to it, both on the flattened
  last map. Triplet loss as published: per anchor, the batch item sharing the most label
  values is the positive and the one sharing the fewest the negative, loss
  ``relu(m - d(a, n) + d(a, p))`` with ``d`` the mean over code dimensions of the squared
  difference and ``m = triplet_margin * code_dim`` (0.5 x 32). Loss = BCE +
  ``triplet_weight`` * triplet.
  ``binary=True`` (``ath-binary``): the embedding is ``sign(code) / sqrt(K)``, whose cosine
  ranking equals the Hamming ranking.
* :class:`AnaXNet` — region features, a 2-layer graph convolution ``width -> gcn_hidden ->
  width``; ``graph_conv="raw"`` (published): ``A X W`` on the raw binary adjacency, no
  normalisation, no bias, LeakyReLU 0.2 between the layers; ``"gcnconv"``
  (``anaxnet-gcnconv``): torch_geometric's normalised ``GCNConv`` with bias. Then attention
  ``softmax(X G^T) X + X`` and the shared head. Embedding: ``anaxnet_embedding="layernorm"``
  (published) the mean over present nodes of the head's LayerNorm of each node; ``"l2"`` the
  mean of the L2-normalised nodes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chextriev.model.backbone import normalize, to_channels_last
from chextriev.model.config import ModelConfig
from chextriev.model.heads import Head, masked_bce
from chextriev.model.pooling import build_attention, pcam_pool, pool
from chextriev.model.region_features import GlobalFeatures
from chextriev.model.retrieval_model import ModelOutput, RegionRetrievalModel, RetrievalModel
from chextriev.model.tensors import adjacency_tensor, masked_mean


class GlobalResNet(RetrievalModel):
    """The global classifier: backbone feature map, optional attention map, pooling, head.

    ``config.pooling`` (``avg``, ``max``, ``lse``, ``pcam``) and ``config.attention``
    (:mod:`chextriev.model.pooling`). Without an attention map and with a fixed pooling, the
    frozen part (:meth:`extract`) returns the pooled backbone feature ``(B, F)`` and the
    embedding of ``global_embedding="backbone"`` is that raw pooled feature (the published
    baseline with ``avg``); the head classifies it standardised. With PCAM or an attention map
    (``config.pools_feature_map``), :meth:`extract` returns the whole frozen map
    ``(B, F, h, w)``; the map is standardised per channel, attended, pooled, and the embedding
    (``"backbone"``) is the pooled feature the classifier sees: for PCAM the mean over classes
    of the class-pooled features ``x_c``. The classifier is the LayerNorm + Linear
    :class:`~chextriev.model.heads.Head`; PCAM applies it at every location of the map (each
    class's logit map) and to each ``x_c`` (``chextriev/model/README.md`` point 17: why not the
    published bare 1x1 convolution).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.features = GlobalFeatures(config)
        dim = config.feature_dim
        self.attention = build_attention(config.attention, dim)
        if config.global_embedding == "projection":
            self.projection = nn.Sequential(nn.Linear(dim, config.width), nn.ReLU(), nn.Linear(config.width, config.width))
            dim = config.width
        else:
            self.projection = None
        self.head = Head(dim, config.num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.config.width if self.projection is not None else self.config.feature_dim

    def extract(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, S, S)`` -> the frozen part: the backbone map ``(B, F, S/32, S/32)`` when the
        trainable part reads it (PCAM, attention), else the map pooled by ``config.pooling``
        ``(B, F)`` (boxes ignored)."""
        if self.config.pooling == "avg" and not self.config.pools_feature_map:
            return self.features(images)  # the averaged map (an encoder: its own global embedding)
        feature_map = self.features.feature_map(images)
        if self.config.pools_feature_map:
            return feature_map
        return pool(feature_map, self.config.pooling, self.config.lse_gamma)

    def _standardized_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, F, h, w)`` standardised per channel (the fitted feature statistics), attended."""
        shift = self.features.feature_shift[None, :, None, None]
        scale = self.features.feature_scale[None, :, None, None]
        x = (feature_map - shift) / scale
        return x if self.attention is None else self.attention(x)

    def probability_maps(self, feature_map: torch.Tensor) -> torch.Tensor:
        """PCAM only: ``(B, F, h, w)`` backbone map -> each class's probability map
        ``(B, C, h, w)`` (what pools that class; its localization heatmap)."""
        if self.config.pooling != "pcam":
            raise ValueError(f"probability maps exist for pooling 'pcam' only, this model pools {self.config.pooling!r}")
        return pcam_pool(self._standardized_map(feature_map), self.head)[2]

    def _embed(self, pooled: torch.Tensor) -> ModelOutput:
        """Standardised pooled ``(B, F)`` -> embedding and logits (the head on the projection, if any)."""
        if self.projection is not None:
            pooled = self.projection(pooled)
        return ModelOutput(embedding=pooled, graph_logits=self.head(pooled))

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        """What :meth:`extract` returns (map or pooled feature) -> :class:`ModelOutput`."""
        if features.ndim == 4:
            x = self._standardized_map(features)
            if self.config.pooling == "pcam":
                logits, pooled, _ = pcam_pool(x, self.head)
                return ModelOutput(embedding=pooled.mean(dim=1), graph_logits=logits)
            return self._embed(pool(x, self.config.pooling, self.config.lse_gamma))
        standardized = self.features.standardize(features)
        if self.projection is not None:
            return self._embed(standardized)
        # published: the raw frozen pooled feature is the embedding; the head classifies it
        return ModelOutput(embedding=features, graph_logits=self.head(standardized))

    def classify_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Backbone map ``(B, F, h, w)`` -> image logits ``(B, C)``: everything after the trunk
        (attention, pooling, head), for heatmaps."""
        if not self.config.pools_feature_map:
            feature_map = pool(feature_map, self.config.pooling, self.config.lse_gamma)
        return self.forward_features(feature_map).graph_logits

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> ModelOutput:
        return self.forward_features(self.extract(images))

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce(output.graph_logits, labels)


# ---------------------------------------------------------------------------------------- ATH
def _known(codes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    known = ~torch.isnan(labels).any(dim=1)
    return codes[known], labels[known].float()


def published_triplet_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The published ATH triplet loss (one mined triplet per anchor).

    ``codes (B, K)``, ``labels (B, C)`` 0/1 (rows with NaN skipped). For anchor ``i``,
    ``agree_ij`` = the number of classes on which ``i`` and ``j`` have the same label value
    (0 or 1); the negative is the first ``j`` with the fewest agreements, the positive the first
    ``j != i`` with the most. ``d(a, b) = mean_k (a_k - b_k)^2``; the loss is the mean over
    anchors of ``relu(margin * K - d(a, n) + d(a, p))``. 0 with fewer than two known rows.
    """
    codes, labels = _known(codes, labels)
    if codes.shape[0] < 2:
        return codes.sum() * 0.0
    agree = (labels[:, None, :] == labels[None, :, :]).sum(dim=-1)  # (B, B)
    negative = agree.argmin(dim=1)
    others = agree.clone()
    others.fill_diagonal_(-1)
    positive = others.argmax(dim=1)
    codes = codes.float()
    d_positive = (codes - codes[positive]).pow(2).mean(dim=1)
    d_negative = (codes - codes[negative]).pow(2).mean(dim=1)
    return F.relu(margin * codes.shape[1] - d_negative + d_positive).mean()


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv3x3([mean_c x; max_c x]))`` ``(B, 1, h, w)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class ResBlock(nn.Module):
    """Two 3x3 conv + BN (the first with ``stride``), a 3x3 conv + BN shortcut when the shape
    changes, ReLU after the sum (the published ATH block)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(), nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
        )
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.body(x) + identity)


def _halved(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2  # a stride-2 3x3 convolution with padding 1
    return size


class PublishedATHNet(nn.Module):
    """``(B, 3, S, S)`` -> code ``(B, K)`` and class logits ``(B, C)`` (published ATHNet).

    ResBlock(3->16, /2), max-pool 3x3 stride 1, spatial attention, ResBlock(16->8, /2),
    average-pool 3x3 stride 1, ResBlock(8->1, /2), flatten ``(S/8)^2`` (1,024 at 256 px), then
    the hash layer and the class layer in parallel. Conv and linear weights xavier-normal.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.block1 = nn.Sequential(ResBlock(3, 16, stride=2), nn.MaxPool2d(3, stride=1, padding=1))
        self.attention = SpatialAttention()
        self.block2 = nn.Sequential(ResBlock(16, 8, stride=2), nn.AvgPool2d(3, stride=1, padding=1))
        self.block3 = ResBlock(8, 1, stride=2)
        flat = _halved(config.image_size, 3) ** 2
        self.hash = nn.Linear(flat, config.code_dim)
        self.classify = nn.Linear(flat, config.num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(module.weight)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 8, S/4, S/4)``: the last multi-channel map (Grad-CAM)."""
        x = self.block1(x)
        return self.block2(self.attention(x) * x)

    def head(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.block3(feature_map).flatten(1)
        return self.hash(flat), self.classify(flat)


class ATH(RetrievalModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # NHWC convolutions: about 2x faster on CPU for these few-channel maps (as for the backbone)
        self.net = PublishedATHNet(config).to(memory_format=torch.channels_last)

    @property
    def embedding_dim(self) -> int:
        return self.config.code_dim

    def extract(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Nothing frozen: ``images (B, 1, S, S)`` in [0, 1] -> the network input, ImageNet-
        normalised RGB ``(B, 3, S, S)`` as published."""
        return to_channels_last(normalize(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> the network's feature map (for heatmaps)."""
        return self.net.feature_map(self.extract(images))

    def classify_feature_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Feature map -> class logits ``(B, C)`` (the rest of the network, for heatmaps)."""
        return self.net.head(feature_map)[1]

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        code, logits = self.net.head(self.net.feature_map(features))
        return ModelOutput(embedding=code, graph_logits=logits, code=code)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> ModelOutput:
        return self.forward_features(self.extract(images))

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce(output.graph_logits, labels) + self.config.triplet_weight * published_triplet_loss(
            output.code, labels, self.config.triplet_margin)

    def retrieval_embedding(self, output: ModelOutput) -> torch.Tensor:
        if not self.config.binary:
            return super().retrieval_embedding(output)
        signs = torch.where(output.code >= 0, 1.0, -1.0).float()
        return signs / signs.shape[-1] ** 0.5


# ------------------------------------------------------------------------------------ AnaXNet
class GraphConvolution(nn.Module):
    """``A X W`` on a fixed raw adjacency ``A``: no normalisation, no bias (published AnaXNet).

    ``W (in, out)`` is initialised uniform in ``+-1/sqrt(out)``, as published.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """``x (B, N, in)``, ``adjacency (N, N)`` -> ``(B, N, out)``."""
        return torch.matmul(adjacency, torch.matmul(x, self.weight))


class RawGCN(nn.Module):
    """Published: ``A lrelu_0.2(A X W1) W2`` on the raw adjacency; missing nodes leave the graph."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gc1 = GraphConvolution(config.width, config.gcn_hidden)
        self.gc2 = GraphConvolution(config.gcn_hidden, config.width)
        self.register_buffer("adjacency", adjacency_tensor(config.adjacency).float(), persistent=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        present = mask.unsqueeze(-1).to(x.dtype)
        hidden = F.leaky_relu(self.gc1(x * present, self.adjacency), 0.2) * present
        return self.gc2(hidden, self.adjacency)


class GCNConvStack(nn.Module):
    """``anaxnet-gcnconv``: two torch_geometric ``GCNConv`` (symmetric normalisation, self
    loops, bias) with a LeakyReLU (slope 0.01) between them, over the present nodes only."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from torch_geometric.nn import GCNConv  # only this variant needs torch_geometric

        self.gcn1 = GCNConv(config.width, config.gcn_hidden)
        self.gcn2 = GCNConv(config.gcn_hidden, config.width)
        adjacency = adjacency_tensor(config.adjacency)
        adjacency.fill_diagonal_(0)  # GCNConv adds self loops
        self.register_buffer("edge_index", adjacency.nonzero().T.contiguous(), persistent=False)

    def _batched_edges(self, mask: torch.Tensor) -> torch.Tensor:
        """Edge index ``(2, E)`` over ``B * 18`` nodes, without edges touching missing nodes."""
        b, n = mask.shape
        offsets = torch.arange(b, device=mask.device).repeat_interleave(self.edge_index.shape[1]) * n
        edges = self.edge_index.repeat(1, b) + offsets
        flat = mask.reshape(-1)
        return edges[:, flat[edges[0]] & flat[edges[1]]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        edges = self._batched_edges(mask)
        g = F.leaky_relu(self.gcn1(x.reshape(b * n, w), edges))
        return self.gcn2(g, edges).view(b, n, w)


class AnaXNet(RegionRetrievalModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.gcn = RawGCN(config) if config.graph_conv == "raw" else GCNConvStack(config)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """``features (B, 18, F)``, ``mask (B, 18)`` -> nodes ``softmax(X G^T) X + X``."""
        x = self.regions.project(features, mask)  # (B, 18, W), zeros where missing
        g = self.gcn(x, mask)
        logits = torch.einsum("biw,bjw->bij", x, g)
        logits = logits.masked_fill(~mask[:, None, :], torch.finfo(logits.dtype).min)
        nodes = torch.einsum("bij,bjw->biw", logits.softmax(dim=-1), x) + x
        nodes = nodes * mask.unsqueeze(-1).to(nodes.dtype)
        node_logits, graph_logits = self.head.node_and_graph(nodes, mask)
        if self.config.anaxnet_embedding == "layernorm":
            embedding = masked_mean(self.head.norm(nodes), mask)
        else:
            embedding = masked_mean(F.normalize(nodes, dim=-1), mask)
        return ModelOutput(embedding=embedding, graph_logits=graph_logits, node_logits=node_logits,
                           node_embeddings=nodes, mask=mask)
