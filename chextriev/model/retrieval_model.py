"""The common model interface and the graph-transformer retrieval model (V0..V6).

Every model (``build_model`` result) is a :class:`RetrievalModel`:

* ``extract(images (B,1,S,S) in [0,1], boxes (B,18,4) model-input pixels NaN-missing)`` -> the
  features of the frozen part (cacheable when ``config.cacheable``);
* ``forward_features(features, mask (B,18) bool) -> ModelOutput``;
* ``forward(images, boxes) -> ModelOutput`` = both;
* ``loss(output, labels (B,C), region_labels (B,18,C)) -> scalar`` (NaN targets ignored);
* ``retrieval_embedding(output) -> (B, D)`` L2-normalised: the one embedding used everywhere;
* ``image_logits(output) -> (B, C)``: the image-level finding logits (graph head, or the node
  head's regions for anatomy-supervised models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chextriev.model.config import ModelConfig
from chextriev.model.graph_transformer import GraphTransformer
from chextriev.model.heads import Heads, graph_node_loss
from chextriev.model.region_features import RegionFeatures, box_mask


@dataclass
class ModelOutput:
    """What every model returns for a batch of ``B`` images.

    ``embedding (B, D)`` raw (normalise with ``retrieval_embedding``); ``graph_logits (B, C)``;
    ``node_logits (B, 18, C)`` and ``node_embeddings (B, 18, R)`` for region models, else None;
    ``mask (B, 18)`` present regions (None for global models); ``code (B, K)`` ATH codes.
    """

    embedding: torch.Tensor
    graph_logits: torch.Tensor
    node_logits: torch.Tensor | None = None
    node_embeddings: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    code: torch.Tensor | None = None


class RetrievalModel(nn.Module):
    """Base class: the interface above. Subclasses implement ``extract``, ``forward_features``."""

    config: ModelConfig

    def extract(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> ModelOutput:
        return self.forward_features(self.extract(images, boxes), box_mask(boxes))

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor) -> torch.Tensor:
        return graph_node_loss(output.graph_logits, output.node_logits, labels, region_labels,
                               output.mask, self.config.graph_importance)

    def retrieval_embedding(self, output: ModelOutput) -> torch.Tensor:
        """``(B, D)`` L2-normalised embedding (cosine similarity = inner product)."""
        return F.normalize(output.embedding.float(), dim=-1)

    def image_logits(self, output: ModelOutput) -> torch.Tensor:
        """``(B, C)`` image-level finding logits: what classifies the image everywhere
        (validation, evaluation, indexing, queries, heatmaps).

        The graph head's logits, except for anatomy-supervised models (``graph_importance``
        0: V0-anatomy, V4), whose graph head receives no gradient and stays at its random
        initialisation. There the image logit of finding ``c`` is the largest node logit of
        ``c`` over the present regions: an image holds a finding when any region does (SPEC:
        image label = OR over regions), and sigmoid is monotonic, so this is the largest
        region probability.
        """
        if self.config.graph_importance > 0 or output.node_logits is None or output.mask is None:
            return output.graph_logits
        present = output.mask.unsqueeze(-1)
        logits = output.node_logits.masked_fill(~present, torch.finfo(output.node_logits.dtype).min)
        return logits.max(dim=1).values

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    def feature_module(self):
        """The module holding the frozen backbone and its feature standardisation, or None (ATH)."""
        for name in ("regions", "features"):
            module = getattr(self, name, None)
            if module is not None and hasattr(module, "set_feature_stats"):
                return module
        return None


class RegionRetrievalModel(RetrievalModel):
    """Base of the models built on the 18 region features (V0..V6, AnaXNet): the region feature
    module ``regions``, the graph and node ``heads``, and a ``width``-dimensional embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.regions = RegionFeatures(config)
        self.heads = Heads(config.width, config.num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.config.width

    def extract(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Backbone region features ``(B, 18, F)`` (before the trainable projection)."""
        return self.regions.extract(images, boxes)


class GraphRetrievalModel(RegionRetrievalModel):
    """Region features -> graph transformer (or none, V0) -> heads; embedding = graph readout."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.graph = GraphTransformer(config)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """``features (B, 18, F)``, ``mask (B, 18)`` -> :class:`ModelOutput`."""
        h0 = self.regions.project(features, mask)
        nodes = self.graph(h0, mask)  # multi-level readout per node, (B, 18, W)
        node_logits, graph_logits, readout = self.heads(nodes, mask)
        return ModelOutput(embedding=readout, graph_logits=graph_logits, node_logits=node_logits,
                           node_embeddings=nodes, mask=mask)
