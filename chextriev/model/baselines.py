"""Baselines of the published comparison, behind the same interface as V0..V6.

* :class:`GlobalResNet` — whole image, backbone average-pooled feature ``(B, F)`` (2048 for
  ResNet50). ``global_embedding="backbone"`` (variant ``resnet50``, as published): the frozen
  pooled feature is the embedding and a trained LayerNorm + Linear head classifies it;
  ``"projection"`` (``resnet50-projected``): a trained projection ``F -> width -> ReLU -> width``
  is the embedding and the head classifies that.
* :class:`ATH` — attention-based triplet hashing: a small CNN with a spatial attention map on
  the whole image (``image_size``, 256 as published), a ``code_dim`` (32) tanh code, loss =
  BCE + ``triplet_weight`` * batch-all triplet loss. ``binary=True`` (``ath-binary``): the
  embedding is ``sign(code) / sqrt(K)``, whose cosine ranking equals the Hamming ranking.
* :class:`AnaXNet` — region features, a 2-layer ``torch_geometric`` GCN over the adjacency
  graph (``width -> gcn_hidden -> width``, LeakyReLU), attention ``softmax(X G^T) X + X``;
  embedding = mean over present nodes of the per-node L2-normalised features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv

from chextriev.model.config import ModelConfig
from chextriev.model.graph_transformer import adjacency_tensor, masked_mean
from chextriev.model.heads import masked_bce
from chextriev.model.region_features import GlobalFeatures, box_mask
from chextriev.model.retrieval_model import ModelOutput, RegionRetrievalModel, RetrievalModel


def _mask_or_none(boxes: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    if boxes is None:
        return torch.ones(batch, 18, dtype=torch.bool, device=device)
    return box_mask(boxes)


class GlobalResNet(RetrievalModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.features = GlobalFeatures(config)
        dim = config.feature_dim
        if config.global_embedding == "projection":
            self.projection = nn.Sequential(nn.Linear(dim, config.width), nn.ReLU(), nn.Linear(config.width, config.width))
            dim = config.width
        else:
            self.projection = None
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, config.num_classes))

    @property
    def embedding_dim(self) -> int:
        return self.config.width if self.projection is not None else self.config.feature_dim

    def extract(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, S, S)`` -> pooled backbone feature ``(B, F)`` (boxes ignored)."""
        return self.features(images)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        standardized = self.features.standardize(features)
        if self.projection is not None:
            embedding = self.projection(standardized)
            return ModelOutput(embedding=embedding, graph_logits=self.head(embedding))
        # published: the raw frozen pooled feature is the embedding; the head classifies it
        return ModelOutput(embedding=features, graph_logits=self.head(standardized))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> ModelOutput:
        return self.forward_features(self.extract(images))

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce(output.graph_logits, labels)


def triplet_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-all triplet loss on cosine distance.

    ``codes (B, K)``, ``labels (B, C)`` 0/1 (rows with NaN skipped). Positive pair: at least one
    shared finding, or both normal; negative: neither. The loss is the mean of
    ``relu(d(a, p) - d(a, n) + margin)`` over the batch's (anchor, positive, negative) triplets
    whose term is positive (Hermans et al.'s batch-all); 0 when there is none.

    Batch-hard mining (only the farthest positive and the nearest negative of each anchor) made
    ATH collapse on the synthetic archive: with multi-label positives the hardest pair can
    rarely be satisfied, every code drifted to the same point within one epoch and the loss
    stayed at the margin (test AUROC 0.53, mAP@10 at the untrained level).
    """
    known = ~torch.isnan(labels).any(dim=1)
    codes, labels = codes[known], labels[known].float()
    if codes.shape[0] < 3:
        return codes.sum() * 0.0
    normal = labels.sum(dim=1) == 0
    positive = ((labels @ labels.T) > 0) | (normal[:, None] & normal[None, :])
    eye = torch.eye(codes.shape[0], dtype=torch.bool, device=codes.device)
    positive = positive & ~eye
    negative = ~positive & ~eye
    triplets = positive[:, :, None] & negative[:, None, :]  # (anchor, positive, negative)
    if not bool(triplets.any()):
        return codes.sum() * 0.0
    unit = F.normalize(codes.float(), dim=1)
    distance = 1.0 - unit @ unit.T
    terms = F.relu(distance[:, :, None] - distance[:, None, :] + margin)[triplets]
    active = terms > 0
    if not bool(active.any()):
        return codes.sum() * 0.0
    return terms[active].mean()


class ATH(RetrievalModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 1
        for out in config.ath_channels:
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.cnn = nn.Sequential(*layers)
        self.attention = nn.Sequential(nn.Conv2d(channels, channels // 2 or 1, 1), nn.ReLU(),
                                       nn.Conv2d(channels // 2 or 1, 1, 1))
        self.to_code = nn.Linear(channels, config.code_dim)
        self.head = nn.Linear(config.code_dim, config.num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.config.code_dim

    def extract(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Nothing frozen: returns ``images (B, 1, S, S)`` centred to [-1, 1]."""
        return images * 2.0 - 1.0

    def attention_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, c, h, w)`` -> spatial attention ``(B, 1, h, w)`` summing to 1 per image."""
        logits = self.attention(feature_map)
        return logits.flatten(1).softmax(dim=1).view_as(logits)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> ModelOutput:
        feature_map = self.cnn(features)
        pooled = (feature_map * self.attention_map(feature_map)).sum(dim=(2, 3))
        code = torch.tanh(self.to_code(pooled))
        return ModelOutput(embedding=code, graph_logits=self.head(code), code=code)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> ModelOutput:
        return self.forward_features(self.extract(images))

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce(output.graph_logits, labels) + self.config.triplet_weight * triplet_loss(
            output.code, labels, self.config.triplet_margin)

    def retrieval_embedding(self, output: ModelOutput) -> torch.Tensor:
        if not self.config.binary:
            return super().retrieval_embedding(output)
        signs = torch.where(output.code >= 0, 1.0, -1.0).float()
        return signs / signs.shape[-1] ** 0.5


class AnaXNet(RegionRetrievalModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.gcn1 = GCNConv(config.width, config.gcn_hidden)
        self.gcn2 = GCNConv(config.gcn_hidden, config.width)
        adjacency = adjacency_tensor(config)
        adjacency.fill_diagonal_(0)  # GCNConv adds self loops
        self.register_buffer("edge_index", adjacency.nonzero().T.contiguous(), persistent=False)

    def _batched_edges(self, mask: torch.Tensor) -> torch.Tensor:
        """Edge index ``(2, E)`` over ``B * 18`` nodes, without edges touching missing nodes."""
        b, n = mask.shape
        offsets = torch.arange(b, device=mask.device).repeat_interleave(self.edge_index.shape[1]) * n
        edges = self.edge_index.repeat(1, b) + offsets
        flat = mask.reshape(-1)
        return edges[:, flat[edges[0]] & flat[edges[1]]]

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        x = self.regions.project(features, mask)  # (B, 18, W)
        b, n, w = x.shape
        edges = self._batched_edges(mask)
        g = F.leaky_relu(self.gcn1(x.reshape(b * n, w), edges))
        g = self.gcn2(g, edges).view(b, n, w)
        logits = torch.einsum("biw,bjw->bij", x, g)
        logits = logits.masked_fill(~mask[:, None, :], torch.finfo(logits.dtype).min)
        nodes = torch.einsum("bij,bjw->biw", logits.softmax(dim=-1), x) + x
        nodes = nodes * mask.unsqueeze(-1).to(nodes.dtype)
        node_logits, graph_logits, _ = self.heads(nodes, mask)
        embedding = masked_mean(F.normalize(nodes, dim=-1), mask)
        return ModelOutput(embedding=embedding, graph_logits=graph_logits, node_logits=node_logits,
                           node_embeddings=nodes, mask=mask)
