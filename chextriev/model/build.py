"""Config -> module: the one place that maps a :class:`ModelConfig` kind to its class.

``build_model(name, **overrides)`` builds a named variant of
:data:`chextriev.model.config.VARIANTS`; ``build_from_config(config)`` any config (what
:mod:`chextriev.checkpoint` does with the config saved in a checkpoint).
"""

from __future__ import annotations

from typing import Any

from chextriev.model.baselines import ATH, AnaXNet, GlobalResNet
from chextriev.model.config import ModelConfig, get_config
from chextriev.model.encoder_model import EncoderRetrievalModel
from chextriev.model.retrieval_model import GraphRetrievalModel, RetrievalModel

MODEL_CLASSES: dict[str, type[RetrievalModel]] = {
    "graph": GraphRetrievalModel,
    "global": GlobalResNet,
    "ath": ATH,
    "anaxnet": AnaXNet,
    "encoder": EncoderRetrievalModel,
}


def build_from_config(config: ModelConfig) -> RetrievalModel:
    """The :class:`~chextriev.model.retrieval_model.RetrievalModel` for ``config``."""
    return MODEL_CLASSES[config.kind](config)


def build_model(name: str, **overrides: Any) -> RetrievalModel:
    """Build variant ``name`` (a key of :data:`~chextriev.model.config.VARIANTS`) with config
    ``overrides``; an unknown name or field lists the valid ones.

    >>> model = build_model("v6", **TINY)
    """
    return build_from_config(get_config(name, **overrides))
