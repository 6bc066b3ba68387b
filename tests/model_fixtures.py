"""Fixtures of the model and training tests (tests/model, tests/training, and any test that asks
for them): a tiny tensor batch, tiny labelled PNG records and a tiny trained v6 checkpoint.
Session-scoped, made once per run (tests/conftest.py imports them; torch loads on first use)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_batch():
    """(images (4, 1, 64, 64), boxes (4, 18, 4) with region 3 of image 0 missing, labels, region labels)."""
    import torch

    from chextriev.anatomy.atlas import default_template

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 64, 64, generator=g)
    boxes = torch.from_numpy(default_template() * 64).float().repeat(4, 1, 1)
    boxes[0, 3] = float("nan")
    labels = (torch.rand(4, 9, generator=g) > 0.5).float()
    region_labels = (torch.rand(4, 18, 9, generator=g) > 0.7).float()
    return images, boxes, labels, region_labels


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    from chextriev.training.quick import synthetic_records

    return synthetic_records(tmp_path_factory.mktemp("tiny-records"), n=20, size=64)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_records, tmp_path_factory):
    from chextriev.training.quick import train_tiny_checkpoint

    return train_tiny_checkpoint(tiny_records, tmp_path_factory.mktemp("tiny-run"), variant="v6")
