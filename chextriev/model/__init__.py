"""The networks: region features, the graph transformer (V0..V6), the shared head, baselines.

Build any of them by name: ``build_model("v6", **TINY)``; the variant table is
:data:`chextriev.model.config.VARIANTS`, the kind -> class map :mod:`chextriev.model.build`.
"""

from chextriev.model.config import TINY, VARIANT_LABELS, VARIANTS, ModelConfig, get_config

# The networks import torch: loaded on first use, so that the variant table
# (`chextriev.model.config`, plain data) is readable without torch (`chextriev train --help`).
_LAZY = {
    "ModelOutput": "chextriev.model.retrieval_model",
    "RetrievalModel": "chextriev.model.retrieval_model",
    "build_from_config": "chextriev.model.build",
    "build_model": "chextriev.model.build",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["TINY", "VARIANTS", "VARIANT_LABELS", "ModelConfig", "ModelOutput", "RetrievalModel",
           "build_from_config", "build_model", "get_config"]
