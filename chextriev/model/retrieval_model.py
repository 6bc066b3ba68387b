"""The common model interface and the graph-transformer retrieval model (V0..V6).

Every model (``build_model`` result) is a :class:`RetrievalModel`:

* ``prepare_input(image (H, W) original in [0, 1], boxes (18, 4) original pixels)`` ->
  ``(input, model boxes)``, one image's model input (``prepare_batch`` stacks several): the
  ``(1, S, S)`` resized image, or in ``crop`` mode the 18 region crops ``(18, 1, C, C)`` cut
  from the original; ``max_input_side`` says how much of the original that needs (``None`` =
  the original: crop mode or a centre crop; else ``image_size``, the side of its square resize);
* ``extract(inputs, boxes (B,18,4) model-input pixels NaN-missing)`` -> the features of the
  frozen part (cacheable when ``config.cacheable``);
* ``forward_features(features, mask (B,18) bool) -> ModelOutput``;
* ``forward(images, boxes) -> ModelOutput`` = both;
* ``loss(output, labels (B,C), region_labels (B,18,C)) -> scalar`` (NaN targets ignored);
* ``retrieval_embedding(output) -> (B, D)`` L2-normalised: the one embedding used everywhere;
* ``image_logits(output) -> (B, C)``: the image-level finding logits (the graph logits, or
  the largest region logit for anatomy-supervised models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chextriev.model.config import ModelConfig
from chextriev.model.graph_transformer import GraphTransformer
from chextriev.model.heads import Head, graph_node_loss
from chextriev.model.preprocess import input_boxes, prepare_input
from chextriev.model.region_features import RegionFeatures
from chextriev.model.tensors import box_mask, masked_mean


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

    @property
    def max_input_side(self) -> int | None:
        """``S`` when the model's first step is the square resize of the whole image to ``S x S``
        (:func:`~chextriev.model.preprocess.prepare_image`), so that a caller may do that resize
        itself with the same filter (:func:`chextriev.io.pixels.model_pixels`) and hand the
        model the same input; ``None`` when the model needs the original: ``crop`` mode (the
        region crops are cut from the full resolution), a centre crop (its window is cut from
        the original before the resize), and a foundation encoder, whose own resize must read the
        original as its model card's pipeline does (a shrink before it would resample twice,
        which moved a tiny BiomedCLIP's image-text cosines by up to 4e-3 on 512 px NIH images)."""
        if self.config.crops_original or self.config.is_encoder or self.config.center_crop < 1.0:
            return None
        return int(self.config.image_size)

    def input_boxes(self, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``(18, 4)`` original-pixel boxes of an ``(H, W)`` image -> model-input boxes."""
        return input_boxes(self.config, boxes, shape)

    def prepare_input(self, image: np.ndarray, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One original ``image (H, W)`` in [0, 1] and ``boxes (18, 4)`` (original pixels) ->
        ``(input, model boxes)``: the ``(1, S, S)`` image and the boxes scaled to it, or in
        ``crop`` mode the region crops ``(18, 1, C, C)`` of the original and the boxes as given
        (:func:`chextriev.model.preprocess.prepare_input`)."""
        return prepare_input(self.config, image, boxes)

    def prepare_batch(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prepare_input` of each image, stacked: ``(inputs (B, ...), boxes (B, 18, 4))``."""
        pairs = [self.prepare_input(image, b) for image, b in zip(images, boxes)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

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

        The graph logits (the shared head on the mean of the nodes), except for anatomy-
        supervised models (``graph_importance`` 0: V0-anatomy, V4), whose loss trains the head
        on single nodes only, never on their mean (``benchmarks/anatomy_image_logits.py``: the
        head on the mean classifies their images worse). There the image logit of finding
        ``c`` is the largest node logit of ``c`` over the present regions: an image holds a
        finding when any region does (SPEC: image label = OR over regions), and sigmoid is
        monotonic, so this is the largest region probability.
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
    module ``regions``, the one shared ``head`` (node and graph logits), and a
    ``width``-dimensional embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.regions = RegionFeatures(config)
        self.head = Head(config.width, config.num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.config.width

    def extract(self, inputs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Backbone region features ``(B, 18, F)`` (before the trainable projection)."""
        return self.regions.extract(inputs, boxes)


class GraphRetrievalModel(RegionRetrievalModel):
    """Region features -> graph transformer (or none, V0) -> the shared head.

    As published: the head classifies the last layer's nodes ``hL`` (node logits) and their
    mean (graph logits); the embedding is the mean over present nodes of the multi-level
    readout ``h0 + ... + hL``, which is also each region's ``node_embeddings``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.graph = GraphTransformer(config)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """``features (B, 18, F)``, ``mask (B, 18)`` -> :class:`ModelOutput`."""
        h0 = self.regions.project(features, mask)
        last, readout = self.graph(h0, mask)  # each (B, 18, W)
        node_logits, graph_logits = self.head.node_and_graph(last, mask)
        return ModelOutput(embedding=masked_mean(readout, mask), graph_logits=graph_logits,
                           node_logits=node_logits, node_embeddings=readout, mask=mask)
