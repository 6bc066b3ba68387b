"""A checkpoint in the `chextriev train` format without training (shared by the metrics and
indexer tests: the commands load it like any checkpoint)."""

from __future__ import annotations

from pathlib import Path


def write_untrained_checkpoint(path: Path, variant: str = "v1") -> Path:
    """A checkpoint in the `chextriev train` format with untrained TINY weights."""
    import torch

    from chextriev.model.build import build_from_config
    from chextriev.model.config import MODEL_FORMAT, TINY, get_config

    config = get_config(variant, **TINY)  # random init (backbone_weights=None): no download
    torch.manual_seed(0)
    model = build_from_config(config)
    torch.save(
        {
            "hyper_parameters": {
                "model_config": config.to_dict(),
                "variant": variant,
                "class_names": list(config.class_names),
                "image_size": config.image_size,
                "model_format": MODEL_FORMAT,
            },
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    return path
