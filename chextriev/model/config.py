"""Variants as data: one :class:`ModelConfig`, a table of named configs, one :func:`build_model`.

Every field changes the computation of the model it applies to (tests/model checks each
option). Names (``VARIANTS`` keys): ``v0-image``, ``v0-anatomy``, ``v1`` .. ``v6`` (SPEC
section 4), and the baselines ``resnet50`` (global, frozen pooled feature as embedding, as
published), ``resnet50-projected`` (global, embedding = trained projection of the pooled
feature), ``ath`` (real-valued 32-d code), ``ath-binary`` (sign of the code: Hamming search),
``anaxnet``.

``TINY`` is an override set for tests and fast presets:
``build_model("v6", **TINY)`` gives a ResNet18, 64 px, width-64, 2-head model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from chextriev.errors import UnknownNameError
from chextriev.vocab import IMAGENOME_FINDINGS

KINDS = ("graph", "global", "ath", "anaxnet")
GRAPHS = ("none", "transformer")
EDGES = ("none", "adjacency", "uniform", "learned")
RESIDUALS = ("layer", "global")
BACKBONES = ("resnet50", "resnet18")
FEATURE_MODES = ("roi", "crop")
GLOBAL_EMBEDDINGS = ("backbone", "projection")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (saved in every checkpoint).

    ``width`` is both the node feature dimension (output of the 2048 -> width -> ReLU -> width
    projection) and the transformer width (SPEC: 1024).
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
    ff_width: int = 4096
    dropout: float = 0.0
    # region features
    backbone: str = "resnet50"  # resnet50 | resnet18
    feature_mode: str = "roi"  # roi | crop
    image_size: int = 512  # square model input; crop mode crops from this image
    crop_size: int = 224  # crop mode: every region crop is resized to crop_size^2
    roi_output: int = 3  # roi mode: RoIAlign output grid, averaged to one vector per region
    train_backbone: bool = False
    backbone_weights: str | None = None  # local torchvision state-dict file, else random init
    backbone_seed: int = 0  # seed of the random init (same backbone across variants: cacheable)
    # supervision
    graph_importance: float = 1.0  # loss = gi * BCE(graph) + (1 - gi) * BCE(node)
    class_names: tuple[str, ...] = IMAGENOME_FINDINGS
    # binary region adjacency (18x18 0/1), None = anatomical default
    adjacency: tuple[tuple[int, ...], ...] | None = None
    # global baseline
    global_embedding: str = "backbone"  # backbone (frozen pooled, published) | projection
    # ATH baseline
    code_dim: int = 32
    binary: bool = False  # embeddings are sign(code): cosine ranking == Hamming ranking
    triplet_margin: float = 0.5
    triplet_weight: float = 1.0
    # conv + BN + ReLU + 2x2 max-pool stages. Five at 256 px: four left a 31 px receptive field,
    # and on the synthetic archive ATH then stayed at the untrained level (test mAP@10 .32 vs .43)
    ath_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    # AnaXNet baseline
    gcn_hidden: int = 2048

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("model kind", self.kind, KINDS),
            ("graph", self.graph, GRAPHS),
            ("edge type", self.edges, EDGES),
            ("residual source", self.residual, RESIDUALS),
            ("backbone", self.backbone, BACKBONES),
            ("feature mode", self.feature_mode, FEATURE_MODES),
            ("global embedding", self.global_embedding, GLOBAL_EMBEDDINGS),
        ):
            if value not in valid:
                raise UnknownNameError(name, value, valid)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.graph_importance <= 1.0:
            raise ValueError(f"graph_importance must be in [0, 1], got {self.graph_importance}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.adjacency is not None:
            object.__setattr__(self, "adjacency", tuple(tuple(int(v) for v in r) for r in self.adjacency))
        object.__setattr__(self, "ath_channels", tuple(self.ath_channels))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        """Channels of the backbone's last feature map (2048 ResNet50, 512 ResNet18)."""
        return 2048 if self.backbone == "resnet50" else 512

    @property
    def has_regions(self) -> bool:
        """True when the model produces per-region outputs (graph variants and AnaXNet)."""
        return self.kind in ("graph", "anaxnet")

    @property
    def uses_backbone(self) -> bool:
        return self.kind in ("graph", "global", "anaxnet")

    @property
    def cacheable(self) -> bool:
        """Frozen torchvision backbone: its features can be cached on disk."""
        return self.uses_backbone and not self.train_backbone

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists for tuples); inverse of :meth:`from_dict`."""
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        data["ath_channels"] = list(self.ath_channels)
        if self.adjacency is not None:
            data["adjacency"] = [list(r) for r in self.adjacency]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnknownNameError("model config field", unknown[0], sorted(known))
        return cls(**data)


_GRAPH = ModelConfig()
VARIANTS: dict[str, ModelConfig] = {}
VARIANTS["v0-image"] = replace(_GRAPH, graph="none", edges="none", abs_pos=False, graph_importance=1.0)
VARIANTS["v0-anatomy"] = replace(VARIANTS["v0-image"], graph_importance=0.0)
VARIANTS["v1"] = replace(_GRAPH, edges="adjacency", abs_pos=False, graph_importance=1.0)
VARIANTS["v2"] = replace(VARIANTS["v1"], edges="uniform")
VARIANTS["v3"] = replace(VARIANTS["v2"], abs_pos=True)
VARIANTS["v5"] = replace(_GRAPH, edges="learned", abs_pos=False, gated_residual=True, residual="global",
                         graph_importance=1.0)
VARIANTS["v4"] = replace(VARIANTS["v5"], abs_pos=True, graph_importance=0.0)
VARIANTS["v6"] = replace(_GRAPH, edges="learned", abs_pos=True, gated_residual=False, residual="layer",
                         graph_importance=1.0)
VARIANTS["resnet50"] = replace(_GRAPH, kind="global", graph="none", edges="none", abs_pos=False,
                               global_embedding="backbone")
VARIANTS["resnet50-projected"] = replace(VARIANTS["resnet50"], global_embedding="projection")
VARIANTS["ath"] = replace(_GRAPH, kind="ath", graph="none", edges="none", abs_pos=False, image_size=256)
VARIANTS["ath-binary"] = replace(VARIANTS["ath"], binary=True)
VARIANTS["anaxnet"] = replace(_GRAPH, kind="anaxnet", graph="none", edges="adjacency", abs_pos=False)
VARIANTS = dict(sorted(VARIANTS.items()))

#: Override set for tests and fast presets (seconds on CPU).
TINY: dict[str, Any] = {
    "backbone": "resnet18",
    "width": 64,
    "heads": 2,
    "ff_width": 128,
    "image_size": 64,
    "crop_size": 32,
    "gcn_hidden": 128,
    "code_dim": 16,
    "ath_channels": (8, 16),
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


def build_from_config(config: ModelConfig):
    """The ``nn.Module`` for ``config`` (a :class:`~chextriev.model.retrieval_model.RetrievalModel`)."""
    if config.kind == "graph":
        from chextriev.model.retrieval_model import GraphRetrievalModel

        return GraphRetrievalModel(config)
    from chextriev.model import baselines

    return {"global": baselines.GlobalResNet, "ath": baselines.ATH, "anaxnet": baselines.AnaXNet}[
        config.kind
    ](config)


def build_model(name: str, **overrides: Any):
    """Build variant ``name`` (a key of :data:`VARIANTS`) with config ``overrides``.

    >>> model = build_model("v6", **TINY)
    """
    return build_from_config(get_config(name, **overrides))
