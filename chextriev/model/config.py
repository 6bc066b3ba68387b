"""Variants as data: one :class:`ModelConfig` and a table of named configs (:data:`VARIANTS`).

Every field changes the computation of the model it applies to (tests/model checks each
option). The table, in the order of the published comparison, then the project's own
improvements under their own names (:data:`VARIANT_LABELS` gives each a table label):

* published: ``resnet50`` (global, frozen pooled feature as embedding), ``ath`` (real-valued
  32-d hash code), ``ath-binary`` (its sign: Hamming search), ``anaxnet``, ``v0-image``,
  ``v0-anatomy``, ``v1`` .. ``v6`` (SPEC section 4, the paper's table), ``v6-published-code``
  (V6 with the gated + global residual that the published code actually ran);
* improvements: ``resnet50-projected`` (embedding = trained projection of the pooled
  feature), ``anaxnet-gcnconv`` (normalised GCNConv with bias, mean of L2-normalised nodes).

This module imports no model class; :mod:`chextriev.model.build` maps a config to its module
(``build_model(name, **overrides)``).

``TINY`` is an override set for tests and fast presets:
``build_model("v6", **TINY)`` gives a ResNet18, 64 px, width-64, 2-head model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from chextriev.errors import ConfigError, UnknownNameError
from chextriev.model.encoders.table import ENCODER_NAMES, default_spec, input_side
from chextriev.vocab import IMAGENOME_FINDINGS

#: ``encoder``: a foundation encoder's own embedding, no trained part (``chextriev model init``).
KINDS = ("graph", "global", "ath", "anaxnet", "encoder")
GRAPHS = ("none", "transformer")
EDGES = ("none", "adjacency", "uniform", "learned")
RESIDUALS = ("layer", "global")
#: Backbone -> channels of its last feature map (the region / global feature dimension).
BACKBONE_FEATURE_DIMS: dict[str, int] = {
    "resnet50": 2048, "resnet18": 512, "densenet121": 1024, "efficientnet_b0": 1280,
    "efficientnet_b1": 1280, "efficientnet_b2": 1408, "efficientnet_b3": 1536, "efficientnet_b4": 1792,
}
#: The torchvision CNNs (:mod:`chextriev.model.backbone`).
CNN_BACKBONES = tuple(BACKBONE_FEATURE_DIMS)
#: Every backbone: the CNNs, then the foundation encoders of :mod:`chextriev.model.encoders.table`
#: (RAD-DINO, BiomedCLIP, CheXzero, MedSigLIP and the generic DINOv2 / SigLIP / open_clip entries),
#: whose region features are pooled from their patch-token grid.
BACKBONES = CNN_BACKBONES + ENCODER_NAMES
#: What the ``encoder`` kind's embedding is: the encoder's global embedding (CLS / pooled, as the
#: published retrieval figures of these encoders use it) or the mean of the 18 anatomy-pooled
#: region embeddings.
EMBEDDING_SOURCES = ("global", "regions")
#: Layout and input of a backbone's weights: torchvision (RGB-replicated, ImageNet-normalised) or
#: xrv (torchxrayvision DenseNet121: one channel in [-1024, 1024], 224 px).
WEIGHTS_FORMATS = ("torchvision", "xrv")
#: Backbones whose torchxrayvision layout is read, and the input side their weights were trained at.
XRV_BACKBONES = ("densenet121",)
XRV_INPUT_SIZE = 224
FEATURE_MODES = ("roi", "crop")
GLOBAL_EMBEDDINGS = ("backbone", "projection")
GRAPH_CONVS = ("raw", "gcnconv")
#: Global pooling of the global classifier's feature map (X_RAY's family; chextriev.model.pooling):
#: average, max, log-sum-exp, probabilistic CAM (Ye et al. 2020).
POOLINGS = ("avg", "max", "lse", "pcam")
#: Attention map over the global classifier's feature map before pooling (X_RAY's three, from the
#: jfhealthcare CheXpert code): squeeze-and-excitation channel attention, DANet position
#: attention, feature pyramid attention.
ATTENTIONS = ("none", "channel", "spatial", "pyramid")
ANAXNET_EMBEDDINGS = ("layernorm", "l2")

#: Format of the model's weights (state-dict layout). 2: one shared LayerNorm + Linear head,
#: attention of ``heads x head_dim`` with biased q/kv and one edge map, published ATH/AnaXNet.
MODEL_FORMAT = 2
#: The checkpoint layout (``chextriev.checkpoint`` reads it, ``chextriev model init`` and
#: training write it): the model's weights are the ``state_dict`` entries under this prefix ...
STATE_PREFIX = "model."
#: ... and a text tower's tokenizer files (name -> bytes) travel under this top-level key.
ENCODER_FILES_KEY = "encoder_files"

#: Fields that configs of this format may still carry after their option was retired, with the
#: values that mean today's behaviour (``None``: any value). ``ath-batchall`` (the earlier
#: five-stage ATH with a batch-all loss) did worse than the published ATH and was removed.
RETIRED_FIELDS: dict[str, Any] = {"ath_network": "published", "triplet": "published", "ath_channels": None}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in every checkpoint).

    ``width`` is both the node feature dimension (output of the 2048 -> width -> ReLU -> width
    projection) and the transformer width (SPEC: 1024); attention runs on ``heads x head_dim``
    (8 x 64 = 512 as published) and maps back to ``width``.
    """

    kind: str = "graph"  # graph | global | ath | anaxnet
    # graph transformer (kind="graph")
    graph: str = "transformer"  # none (mean of node features) | transformer
    edges: str = "learned"  # none | adjacency | uniform | learned
    abs_pos: bool = True
    gated_residual: bool = False
    residual: str = "layer"  # layer | global
    num_layers: int = 2
    width: int = 1024
    heads: int = 8
    head_dim: int = 64  # attention inner width = heads * head_dim (published 8 x 64 = 512)
    ff_width: int = 4096
    dropout: float = 0.0
    # region features
    backbone: str = "resnet50"  # one of BACKBONES (resnet, densenet121, efficientnet_b0..b4)
    feature_mode: str = "roi"  # roi | crop
    image_size: int = 512  # square model input (roi, global, ATH); crop mode crops the original
    crop_size: int = 224  # crop mode: every region crop of the original is resized to crop_size^2
    roi_output: int = 3  # roi mode: RoIAlign output grid, averaged to one vector per region
    # fraction of each side kept around the image centre before the model input (1 = the whole
    # image); set by training with random crops (chextriev.training.augment), as classifiers do
    center_crop: float = 1.0
    train_backbone: bool = False
    backbone_weights: str | None = None  # local state-dict file (not saved: the checkpoint holds the weights)
    # layout and input of the backbone: torchvision (3 channels, ImageNet-normalised) | xrv
    # (torchxrayvision DenseNet121: 1 channel in [-1024, 1024], 224 px model input)
    backbone_weights_format: str = "torchvision"
    backbone_seed: int = 0  # seed of the random init (same backbone across variants: cacheable)
    # a foundation encoder backbone (backbone in ENCODER_NAMES): its description
    # (chextriev.model.encoders.table.encoder_spec: family, architecture, input preparation, dims,
    # text tower, weights checksum); filled with the default architecture when not given
    encoder: dict[str, Any] | None = None
    # kind "encoder" (no trained part): the embedding source, and whether the encoder's features
    # are standardised with statistics of the user's archive (a joint image-text embedding is
    # kept as the encoder gives it, so that text scores against it as the model was trained)
    embedding_source: str = "global"  # global | regions
    standardize: bool = True
    # supervision
    graph_importance: float = 1.0  # loss = gi * BCE(graph) + (1 - gi) * BCE(node)
    class_names: tuple[str, ...] = IMAGENOME_FINDINGS
    # binary region adjacency (18x18 0/1), None = anatomical default
    adjacency: tuple[tuple[int, ...], ...] | None = None
    # global baseline
    global_embedding: str = "backbone"  # backbone (frozen pooled, published) | projection
    pooling: str = "avg"  # avg | max | lse | pcam (global classifier; chextriev.model.pooling)
    attention: str = "none"  # none | channel | spatial | pyramid (global classifier, before pooling)
    lse_gamma: float = 10.0  # sharpness of the lse pooling (X_RAY's default): avg as it -> 0, max as it -> inf
    # ATH baseline
    code_dim: int = 32
    binary: bool = False  # embeddings are sign(code): cosine ranking == Hamming ranking
    # times code_dim, on the per-dimension mean squared distance (published)
    triplet_margin: float = 0.5
    triplet_weight: float = 1.0
    # AnaXNet baseline
    graph_conv: str = "raw"  # raw (A X W, published) | gcnconv (normalised, bias)
    anaxnet_embedding: str = "layernorm"  # layernorm (published) | l2: mean of normalised nodes
    gcn_hidden: int = 2048

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("model kind", self.kind, KINDS),
            ("graph", self.graph, GRAPHS),
            ("edge type", self.edges, EDGES),
            ("residual source", self.residual, RESIDUALS),
            ("backbone", self.backbone, BACKBONES),
            ("backbone weights format", self.backbone_weights_format, WEIGHTS_FORMATS),
            ("feature mode", self.feature_mode, FEATURE_MODES),
            ("global embedding", self.global_embedding, GLOBAL_EMBEDDINGS),
            ("graph convolution", self.graph_conv, GRAPH_CONVS),
            ("AnaXNet embedding", self.anaxnet_embedding, ANAXNET_EMBEDDINGS),
            ("pooling", self.pooling, POOLINGS),
            ("attention map", self.attention, ATTENTIONS),
            ("embedding source", self.embedding_source, EMBEDDING_SOURCES),
        ):
            if value not in valid:
                raise UnknownNameError(name, value, valid)
        for name in ("width", "heads", "head_dim", "ff_width", "code_dim", "gcn_hidden", "crop_size", "roi_output"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.backbone_weights_format == "xrv" and self.uses_backbone:
            if self.backbone not in XRV_BACKBONES:
                raise UnknownNameError("backbone for torchxrayvision (xrv) weights", self.backbone, XRV_BACKBONES)
            side, name = (self.crop_size, "crop_size") if self.crops_original else (self.image_size, "image_size")
            if side != XRV_INPUT_SIZE:
                raise ValueError(f"torchxrayvision DenseNet121 weights take {XRV_INPUT_SIZE} px inputs: set "
                                 f"{name}={XRV_INPUT_SIZE} (got {side})")
        if self.kind != "global" and (self.pooling, self.attention) != ("avg", "none"):
            raise ConfigError(f"pooling and attention maps belong to the global classifier (resnet50, "
                             f"resnet50-projected); a {self.kind} model pools its own way (got pooling="
                             f"{self.pooling!r}, attention={self.attention!r})")
        if self.pooling == "pcam" and self.global_embedding == "projection":
            raise ConfigError("pooling 'pcam' classifies each class's pooled feature with that class's own "
                             "classifier row, so a projection would never be trained: use it with "
                             "global_embedding='backbone' (variant resnet50)")
        if self.is_encoder and (self.pooling, self.attention) != ("avg", "none"):
            raise ConfigError(f"the global classifier on the foundation encoder {self.backbone!r} classifies the "
                             "encoder's own global embedding (CLS or pooled); pooling and attention maps apply to "
                             "the CNN backbones")
        if not self.lse_gamma > 0:
            raise ValueError(f"lse_gamma must be > 0, got {self.lse_gamma}")
        self._check_encoder()
        if not 0.0 < self.center_crop <= 1.0:
            raise ValueError(f"center_crop must be in (0, 1], got {self.center_crop}")
        if not 0.0 <= self.graph_importance <= 1.0:
            raise ValueError(f"graph_importance must be in [0, 1], got {self.graph_importance}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.adjacency is not None:
            object.__setattr__(self, "adjacency", tuple(tuple(int(v) for v in r) for r in self.adjacency))

    def _check_encoder(self) -> None:
        if self.backbone not in ENCODER_NAMES:
            if self.kind == "encoder":
                raise UnknownNameError("encoder for an encoder model", self.backbone, ENCODER_NAMES)
            if self.encoder is not None:
                raise ValueError(f"an encoder description is given but backbone {self.backbone!r} is a CNN")
            return
        if self.encoder is None:
            object.__setattr__(self, "encoder", default_spec(self.backbone, self.backbone_seed))
        if self.encoder.get("name") != self.backbone:
            raise ValueError(f"the encoder description is of {self.encoder.get('name')!r}, backbone is {self.backbone!r}")
        side = input_side(self.encoder["input"])
        if self.uses_backbone and self.image_size != side:
            raise ValueError(f"encoder {self.backbone} takes {side} px inputs (its input preparation): set "
                             f"image_size={side} (got {self.image_size})")
        if self.has_regions and self.feature_mode != "roi":
            raise ValueError(f"encoder {self.backbone} pools its regions from the patch-token grid: feature_mode "
                             f"must be 'roi' (got {self.feature_mode!r})")
        if self.backbone_weights_format != "torchvision":
            raise ValueError(f"backbone_weights_format {self.backbone_weights_format!r} is for CNN backbones; an "
                             "encoder's files are read in its own library's format")
        if self.kind == "encoder" and self.class_names:
            raise ValueError("an encoder model has no finding head: class_names must be empty")

    def __hash__(self) -> int:  # the encoder description is a dict: hash the JSON form
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    @property
    def is_encoder(self) -> bool:
        """The model runs a foundation encoder (patch tokens), not a torchvision CNN (ATH, which has
        its own network, never does)."""
        return self.backbone in ENCODER_NAMES and self.uses_backbone

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def inner_width(self) -> int:
        """Attention inner width ``heads * head_dim`` (512 as published)."""
        return self.heads * self.head_dim

    @property
    def feature_dim(self) -> int:
        """Channels of the backbone's last feature map (:data:`BACKBONE_FEATURE_DIMS`: 2048
        ResNet50, 512 ResNet18, 1024 DenseNet121, 1280 EfficientNet-B0, ...); for an encoder the
        patch tokens' width (region features), or for the global baseline and the ``encoder``
        kind the width of its global embedding."""
        if self.is_encoder:
            key = "global_dim" if self.kind in ("global", "encoder") else "token_dim"
            return int(self.encoder[key])
        return BACKBONE_FEATURE_DIMS[self.backbone]

    @property
    def has_regions(self) -> bool:
        """True when the model produces per-region outputs (graph variants, AnaXNet, and the
        ``encoder`` kind's anatomy-pooled region embeddings)."""
        return self.kind in ("graph", "anaxnet", "encoder")

    @property
    def has_findings(self) -> bool:
        """The model has a finding head (every kind but ``encoder``)."""
        return self.kind != "encoder" and bool(self.class_names)

    @property
    def uses_backbone(self) -> bool:
        return self.kind in ("graph", "global", "anaxnet", "encoder")

    @property
    def cacheable(self) -> bool:
        """Frozen torchvision backbone: its features can be cached on disk."""
        return self.uses_backbone and not self.train_backbone

    @property
    def pools_feature_map(self) -> bool:
        """The global classifier's trainable part reads the whole feature map (``(B, F, h, w)``
        features: PCAM pooling or an attention map); else its features are the map pooled by the
        fixed ``pooling`` (``(B, F)``)."""
        return self.kind == "global" and (self.pooling == "pcam" or self.attention != "none")

    @property
    def crops_original(self) -> bool:
        """Region crops are taken from the full-resolution original (``crop`` mode)."""
        return self.has_regions and self.feature_mode == "crop"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists for tuples); inverse of :meth:`from_dict`."""
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        if self.adjacency is not None:
            data["adjacency"] = [list(r) for r in self.adjacency]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        for name, meaning in RETIRED_FIELDS.items():
            if name in data and name not in known:
                value = data.pop(name)
                if meaning is not None and value != meaning:
                    raise UnknownNameError(f"retired {name} option", value, [meaning])
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnknownNameError("model config field", unknown[0], sorted(known))
        return cls(**data)


_GRAPH = ModelConfig()
_V = {}
# --- the published comparison (SPEC section 4), in its table's order
_V["resnet50"] = replace(_GRAPH, kind="global", graph="none", edges="none", abs_pos=False,
                         global_embedding="backbone")
_V["ath"] = replace(_GRAPH, kind="ath", graph="none", edges="none", abs_pos=False, image_size=256)
_V["ath-binary"] = replace(_V["ath"], binary=True)
_V["anaxnet"] = replace(_GRAPH, kind="anaxnet", graph="none", edges="adjacency", abs_pos=False)
_V["v0-image"] = replace(_GRAPH, graph="none", edges="none", abs_pos=False, graph_importance=1.0)
_V["v0-anatomy"] = replace(_V["v0-image"], graph_importance=0.0)
_V["v1"] = replace(_GRAPH, edges="adjacency", abs_pos=False, graph_importance=1.0)
_V["v2"] = replace(_V["v1"], edges="uniform")
_V["v3"] = replace(_V["v2"], abs_pos=True)
_V["v4"] = replace(_GRAPH, edges="learned", abs_pos=True, gated_residual=True, residual="global",
                   graph_importance=0.0)
_V["v5"] = replace(_V["v4"], abs_pos=False, graph_importance=1.0)
_V["v6"] = replace(_GRAPH, edges="learned", abs_pos=True, gated_residual=False, residual="layer",
                   graph_importance=1.0)
# the published code ignores its gated-residual flag and defaults to the global residual
_V["v6-published-code"] = replace(_V["v6"], gated_residual=True, residual="global")
# --- the project's improvements, under their own names
_V["resnet50-projected"] = replace(_V["resnet50"], global_embedding="projection")
_V["anaxnet-gcnconv"] = replace(_V["anaxnet"], graph_conv="gcnconv", anaxnet_embedding="l2")
VARIANTS: dict[str, ModelConfig] = _V

#: Table label of every variant (results tables, summaries), in :data:`VARIANTS` order.
VARIANT_LABELS: dict[str, str] = {
    "resnet50": "ResNet50 global",
    "ath": "ATH",
    "ath-binary": "ATH (binary codes)",
    "anaxnet": "AnaXNet",
    "v0-image": "V0 image-level",
    "v0-anatomy": "V0 anatomy-level",
    "v1": "V1",
    "v2": "V2",
    "v3": "V3",
    "v4": "V4",
    "v5": "V5",
    "v6": "V6",
    "v6-published-code": "V6 (published code's settings)",
    "resnet50-projected": "ResNet50 projected (ours)",
    "anaxnet-gcnconv": "AnaXNet GCNConv (ours)",
}
assert list(VARIANT_LABELS) == list(VARIANTS), "every variant needs a table label"

#: Override set for tests and fast presets (seconds on CPU).
TINY: dict[str, Any] = {
    "backbone": "resnet18",
    "width": 64,
    "heads": 2,
    "head_dim": 16,
    "ff_width": 128,
    "image_size": 64,
    "crop_size": 32,
    "gcn_hidden": 128,
    "code_dim": 16,
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named variant's config with ``overrides`` applied (unknown name lists the valid ones).

    An override that does not name a :class:`ModelConfig` field raises :class:`UnknownNameError`.
    """
    key = name.lower()
    if key not in VARIANTS:
        raise UnknownNameError("model variant", name, VARIANTS)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for option in overrides:
        if option not in known:
            raise UnknownNameError("model config field", option, sorted(known))
    return replace(VARIANTS[key], **overrides)
