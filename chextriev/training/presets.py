"""Training presets: model overrides and optimisation settings.

* ``tiny`` — tests: ResNet18, 64 px, width 64, 2 heads of 16, 2 epochs, batch 8 (seconds on
  CPU).
* ``synthetic-small`` — the synthetic archive on CPU: ResNet18 (random, frozen, features
  cached), 256 px, ``roi`` features, transformer width 256 / 4 heads of 32 (inner width 128:
  half the width, as the published 512 of 1024) / ff 512 (smaller than the published
  1024 / 8 x 64 / 4096 so that ~1,000 images train in minutes on 2 cores), AnaXNet hidden
  512 (the published ATH network has fixed widths, so no ATH override), batch 32, lr 1e-3,
  up to 20 epochs, early stop after 5 epochs without a better validation mAP@10.
* ``mimic`` — the published setting: ResNet50 frozen, ``crop`` features (224 crops of the
  full-resolution original), width 1024, 8 heads of 64, Adam lr 1e-4, batch 16 x gradient
  accumulation 8, ReduceLROnPlateau on validation mAP@10, early stop (patience 10), up to 100
  epochs.
* ``synthetic-small-aug``, ``mimic-aug`` — the same with the ``standard`` training
  augmentation (:mod:`chextriev.training.augment`: random crop, shift, rotation, scale,
  perspective, brightness and contrast, horizontal flips where the findings allow them); the
  model then takes the centre crop at test. The published presets train without augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from chextriev.errors import UnknownNameError
from chextriev.model.config import TINY


@dataclass(frozen=True)
class Preset:
    name: str
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 16
    accumulate: int = 1
    max_epochs: int = 30
    patience: int = 6  # early stopping on validation mAP@10
    plateau_patience: int = 3  # ReduceLROnPlateau
    plateau_factor: float = 0.5
    val_k: int = 10
    num_workers: int = 0
    cache_features: bool = True  # cache frozen backbone features on disk
    augment: str = "none"  # chextriev.training.augment.AUGMENTATIONS name (training split only)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", model=dict(TINY), lr=3e-3, batch_size=8, max_epochs=2, patience=2),
    "synthetic-small": Preset(
        "synthetic-small",
        model={"backbone": "resnet18", "image_size": 256, "feature_mode": "roi", "width": 256, "heads": 4,
               "head_dim": 32, "ff_width": 512, "gcn_hidden": 512},
        lr=1e-3, batch_size=32, max_epochs=20, patience=5,
    ),
    "mimic": Preset(
        "mimic",
        model={"backbone": "resnet50", "feature_mode": "crop", "crop_size": 224, "image_size": 1024,
               "width": 1024, "heads": 8, "head_dim": 64, "ff_width": 4096},
        lr=1e-4, batch_size=16, accumulate=8, max_epochs=100, patience=10, plateau_patience=5,
        num_workers=8,
    ),
}
PRESETS["synthetic-small-aug"] = replace(PRESETS["synthetic-small"], name="synthetic-small-aug", augment="standard")
PRESETS["mimic-aug"] = replace(PRESETS["mimic"], name="mimic-aug", augment="standard")


def get_preset(name: str, **overrides: Any) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError("training preset", name, PRESETS)
    return replace(PRESETS[name], **overrides)
