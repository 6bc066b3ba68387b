"""The ``encoder`` kind: a foundation encoder's own embedding, nothing trained, no labels.

``chextriev model init`` builds it (:mod:`chextriev.model.init`). Per image:

* the **global** feature ``(G,)``: the encoder's own image embedding (CLS / pooled; for the
  CLIP families the joint image-text embedding);
* the 18 **region** features ``(18, G)``: RoIAlign of each anatomy box over the patch-token
  grid (:func:`chextriev.model.region_features.roi_pool`), mapped into the global feature's
  space the way the encoder maps its tokens there
  (:meth:`~chextriev.model.encoders.families.EncoderTrunk.to_global_space`): for the CLIP
  families that is the joint space, so a text embedding scores regions too.

``extract`` returns both as ``(B, 19, G)`` (row 0 the global feature). With ``standardize`` each
is standardised per channel with the mean and spread of the user's own archive (a sample fitted
by ``model init``: ``feature_shift`` / ``feature_scale`` for the global feature,
``region_shift`` / ``region_scale`` for the regions); without, they are kept as the encoder gives
them (the default for joint image-text embeddings: a text embedding then scores against them
exactly as the model was trained). The embedding is the global feature (``embedding_source
global``, the published retrieval setting of these encoders) or the mean of the L2-normalised
present regions (``regions``); region embeddings are the (standardised) region features. There
is no finding head: ``image_logits`` are ``(B, 0)`` and there are no node logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chextriev.model.config import ModelConfig
from chextriev.model.region_features import GlobalFeatures, feature_scale, roi_pool
from chextriev.model.retrieval_model import ModelOutput, RetrievalModel
from chextriev.model.tensors import box_mask, masked_mean


class EncoderFeatures(GlobalFeatures):
    """The frozen encoder, its region pooling, and the two standardisations (identity until
    :meth:`set_feature_stats` / :meth:`set_region_stats` are fitted)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.register_buffer("region_shift", torch.zeros(config.feature_dim))
        self.register_buffer("region_scale", torch.ones(config.feature_dim))

    def set_region_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise region features with the per-channel ``mean`` / ``std`` of the user's
        archive (the same scale floor as :meth:`set_feature_stats`)."""
        self.region_shift.copy_(mean.to(self.region_shift))
        self.region_scale.copy_(feature_scale(std).to(self.region_scale))

    def standardize_regions(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.region_shift) / self.region_scale

    def pool_regions(self, feature_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """RoIAlign of ``boxes (B, 18, 4)`` on the token grid, in the global feature's space:
        ``(B, 18, G)``, zeros for missing regions."""
        pooled = roi_pool(feature_map, boxes, self.config.image_size, self.config.roi_output)
        mask = box_mask(boxes).unsqueeze(-1).to(pooled.dtype)
        return self.trunk.to_global_space(pooled) * mask

    def extract(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` prepared images, ``boxes (B, 18, 4)`` in their pixels -> ``(B, 19, G)``."""
        global_feature, grid = self.encode(images)
        return torch.cat([global_feature.unsqueeze(1), self.pool_regions(grid, boxes)], dim=1)


class EncoderRetrievalModel(RetrievalModel):
    """See the module docstring. ``text_tower``: the encoder's text network when its embedding
    lies in the joint image-text space (a CLIP family, not standardised), else None."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.features = EncoderFeatures(config)
        self.text_tower = None
        if config.encoder.get("text") and not config.standardize:
            from chextriev.model.encoders.build import encoder_text

            self.text_tower = encoder_text(config)
            for parameter in self.text_tower.parameters():
                parameter.requires_grad_(False)
            self.text_tower.eval()

    @property
    def embedding_dim(self) -> int:
        return self.config.feature_dim

    @property
    def in_text_space(self) -> bool:
        """The embedding and the region embeddings lie in the text tower's joint space."""
        return self.text_tower is not None

    def train(self, mode: bool = True):
        super().train(mode)
        self.features.eval()
        if self.text_tower is not None:
            self.text_tower.eval()
        return self

    def extract(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.features.extract(images, boxes)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        """``features (B, 19, G)`` (row 0 global), ``mask (B, 18)`` -> :class:`ModelOutput`."""
        global_feature, regions = features[:, 0], features[:, 1:]
        if self.config.standardize:
            global_feature = self.features.standardize(global_feature)
            regions = self.features.standardize_regions(regions)
        regions = regions * mask.unsqueeze(-1).to(regions.dtype)
        if self.config.embedding_source == "global":
            embedding = global_feature
        else:
            embedding = masked_mean(F.normalize(regions.float(), dim=-1), mask)
        return ModelOutput(embedding=embedding, graph_logits=global_feature.new_zeros(global_feature.shape[0], 0),
                           node_embeddings=regions, mask=mask)

    def loss(self, output: ModelOutput, labels: torch.Tensor, region_labels: torch.Tensor) -> torch.Tensor:
        raise ValueError("an encoder model has no trained part and no loss: train a variant on its tokens instead "
                         "(chextriev train --variant v6 --backbone ...)")
