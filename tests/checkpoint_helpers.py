"""A checkpoint in the `chextriev train` format without training (shared by the metrics and
indexer tests: the commands load it like any checkpoint)."""

from __future__ import annotations

from pathlib import Path


def write_untrained_checkpoint(path: Path, variant: str = "v1") -> Path:
    """A checkpoint in the `chextriev train` format with untrained TINY weights."""
    import torch

    from chextriev.checkpoint import save_model_checkpoint
    from chextriev.model.build import build_from_config
    from chextriev.model.config import TINY, get_config

    config = get_config(variant, **TINY)  # random init (backbone_weights=None): no download
    torch.manual_seed(0)
    return save_model_checkpoint(path, build_from_config(config), variant=variant)
