"""Fixtures of the metrics tests: a tiny labelled PNG folder and a tiny untrained checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from chextriev.vocab import IMAGENOME_FINDINGS


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """12 PNG images (64x64) with a manifest: patients of 2 images, train/validate/test splits."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        img = (rng.random((64, 64)) * 80).astype(np.uint8)
        finding = IMAGENOME_FINDINGS[i % 3]
        if i % 4 != 3:  # every 4th image normal
            img[16:40, 8 + (i % 3) * 16 : 24 + (i % 3) * 16] += 150
        Image.fromarray(img).save(root / f"img{i}.png")
        split = "test" if i < 8 else "validate"
        rows.append({"path": f"img{i}.png", "image_id": f"img{i}", "patient_id": f"p{i // 2}",
                     "split": split, "labels": "" if i % 4 == 3 else finding})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained TINY v1 checkpoint (the metrics do not need a trained model)."""
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-v1.ckpt")
