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

# The networks import torch: loaded on first use, so that the variant table
# (`chextriev.model.config`, plain data) is readable without torch (`chextriev train --help`).
_LAZY = {"ModelOutput": "chextriev.model.retrieval_model", "RetrievalModel": "chextriev.model.retrieval_model"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TINY", "VARIANTS", "ModelConfig", "ModelOutput", "RetrievalModel", "build_from_config",
           "build_model", "get_config"]
