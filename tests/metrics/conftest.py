"""Fixtures of the metrics tests: a tiny labelled PNG folder and a tiny untrained checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from checkpoint_helpers import write_untrained_checkpoint  # tests/checkpoint_helpers.py

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained TINY v1 checkpoint (the metrics do not need a trained model)."""
    return write_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-v1.ckpt")
