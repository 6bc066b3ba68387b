"""Tiny hand-made chest phantoms with known region boxes (no dependency on chextriev.synth)."""

from __future__ import annotations

import numpy as np
import pytest

from chextriev.anatomy.atlas import default_template
from chextriev.records import Record
from chextriev.vocab import region_index


def _fill_ellipse(image, box, value):
    h, w = image.shape
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
    image[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = value


def make_phantom(rng: np.random.Generator, height: int, width: int):
    """One phantom: (image (H, W) float32, boxes (18, 4) pixels). The whole template is
    shifted and scaled at random, so a fixed atlas cannot fit every image."""
    scale = rng.uniform(0.65, 1.0)
    centre = np.array([rng.uniform(0.38, 0.62), rng.uniform(0.38, 0.6)])
    norm = default_template()
    norm = (norm - 0.5) * scale + np.tile(centre, 2)
    boxes = (norm * np.array([width, height, width, height])).astype(np.float32)
    image = np.full((height, width), 0.25, np.float32)
    body = [boxes[:, 0].min() - 4, boxes[:, 1].min() - 4, boxes[:, 2].max() + 4, boxes[:, 3].max() + 4]
    _fill_ellipse(image, body, 0.45)
    for name, value in (("right lung", 0.08), ("left lung", 0.08), ("mediastinum", 0.7),
                        ("cardiac silhouette", 0.85), ("trachea", 0.15)):
        _fill_ellipse(image, boxes[region_index(name)], value)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), boxes


@pytest.fixture
def phantoms():
    """``phantoms(n, seed, size)`` -> (list of images, list of (18,4) boxes)."""

    def make(n: int, seed: int = 0, size: tuple[int, int] = (96, 96)):
        rng = np.random.default_rng(seed)
        pairs = [make_phantom(rng, *size) for _ in range(n)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    return make


@pytest.fixture
def phantom_records(phantoms, tmp_path):
    """``phantom_records(n, seed, size)`` -> Records whose ``source`` is an in-memory array id,
    and a loader mapping source -> image."""

    def make(n: int, seed: int = 0, size: tuple[int, int] = (96, 96)):
        images, boxes = phantoms(n, seed, size)
        store = {f"mem://{seed}/{i}": image for i, image in enumerate(images)}
        records = [Record(source=key, image_id=key, boxes=b, image_size=size) for key, b in zip(store, boxes)]
        return records, store.__getitem__

    return make
