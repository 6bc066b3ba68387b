"""The networks: region features, the graph transformer (V0..V6), the shared head, baselines.

Build any of them by name: ``build_model("v6", **TINY)``; the variant table is
:data:`chextriev.model.config.VARIANTS`, the kind -> class map :mod:`chextriev.model.build`.
"""

from chextriev.model.build import build_from_config, build_model
from chextriev.model.config import TINY, VARIANT_LABELS, VARIANTS, ModelConfig, get_config
from chextriev.model.retrieval_model import ModelOutput, RetrievalModel

__all__ = ["TINY", "VARIANTS", "VARIANT_LABELS", "ModelConfig", "ModelOutput", "RetrievalModel",
           "build_from_config", "build_model", "get_config"]
