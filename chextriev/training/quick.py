"""Tiny checkpoints for other packages' tests (seconds on CPU).

``train_tiny_checkpoint(data, out_dir, variant="v6") -> Path`` trains the ``tiny`` preset
(ResNet18, 64 px, width 64) for one epoch on ``data`` (an archive folder for ``load_records``,
or a list of :class:`~chextriev.records.Record`) and returns ``out_dir/best.ckpt``.
:func:`synthetic_records` makes such records without any archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from chextriev.records import Record
from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS


def _template_boxes(size: int) -> np.ndarray:
    from chextriev.anatomy.atlas import default_template

    return (default_template() * size).astype(np.float32)


def synthetic_records(directory: str | Path, n: int = 24, size: int = 64, seed: int = 0,
                      class_names: Sequence[str] = IMAGENOME_FINDINGS) -> list[Record]:
    """``n`` labelled PNG records (4 patients per split group): a finding brightens its regions.

    Finding ``f`` (of the first 3) adds a bright square inside region ``2 + 4 f``'s box; labels,
    region labels, boxes and ``train/validate/test`` splits are set (patient-disjoint).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    boxes = _template_boxes(size)
    records = []
    for i in range(n):
        image = rng.normal(0.3, 0.05, (size, size)).astype(np.float32)
        labels = np.zeros(len(class_names), np.float32)
        region_labels = np.zeros((NUM_REGIONS, len(class_names)), np.float32)
        for f in range(3):
            if rng.random() < 0.4:
                region = (2 + 4 * f) % NUM_REGIONS
                x1, y1, x2, y2 = boxes[region].astype(int)
                image[y1:max(y2, y1 + 2), x1:max(x2, x1 + 2)] += 0.5
                labels[f] = 1
                region_labels[region, f] = 1
        path = directory / f"img{i:03d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
        split = ("train", "train", "train", "validate", "test")[i % 5]
        records.append(Record(source=str(path), image_id=f"img{i:03d}", patient_id=f"p{i}", study_id=f"s{i}",
                              view="PA", class_names=tuple(class_names), labels=labels,
                              region_labels=region_labels, boxes=boxes.copy(), image_size=(size, size),
                              split=split))
    return records


def train_tiny_checkpoint(data: str | Path | Sequence[Record], out_dir: str | Path, variant: str = "v6",
                          max_epochs: int = 1, seed: int = 0) -> Path:
    """Train ``variant`` with the ``tiny`` preset; returns the path of ``best.ckpt``."""
    from chextriev.training.fit import train, train_records

    options = {"variant": variant, "preset": "tiny", "max_epochs": max_epochs, "seed": seed, "progress": False,
               "cache_dir": Path(out_dir) / "feature-cache"}
    if isinstance(data, (str, Path)):
        result = train(data, out_dir, **options)
    else:
        result = train_records(list(data), out_dir, **options)
    return result.best
