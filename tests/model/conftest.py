"""Fixtures for the model tests: tiny images/boxes and tiny labelled PNG records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chextriev.anatomy.atlas import default_template
from chextriev.training.quick import synthetic_records

# Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP contention
# (a 64 px ResNet18 batch takes 0.08 s with one thread and seconds with two under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_batch():
    """(images (4, 1, 64, 64), boxes (4, 18, 4) with region 3 of image 0 missing, labels, region labels)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 64, 64, generator=g)
    boxes = torch.from_numpy(default_template() * 64).float().repeat(4, 1, 1)
    boxes[0, 3] = float("nan")
    labels = (torch.rand(4, 9, generator=g) > 0.5).float()
    region_labels = (torch.rand(4, 18, 9, generator=g) > 0.7).float()
    return images, boxes, labels, region_labels


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    return synthetic_records(tmp_path_factory.mktemp("tiny-records"), n=20, size=64)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_records, tmp_path_factory):
    from chextriev.training.quick import train_tiny_checkpoint

    return train_tiny_checkpoint(tiny_records, tmp_path_factory.mktemp("tiny-run"), variant="v6")


def seeded(fn, seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    return fn()
