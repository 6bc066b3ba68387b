"""The networks: region features, the graph transformer (V0..V6), heads and baselines.

Build any of them by name: ``build_model("v6", **TINY)``; see :mod:`chextriev.model.config`.
"""

from chextriev.model.config import (
           TINY,
           VARIANTS,
           ModelConfig,
           build_from_config,
           build_model,
           get_config,
)
from chextriev.model.retrieval_model import ModelOutput, RetrievalModel

__all__ = ["TINY", "VARIANTS", "ModelConfig", "ModelOutput", "RetrievalModel", "build_from_config",
           "build_model", "get_config"]
