"""The anatomy graph on a frozen foundation encoder: every variant of the table takes an encoder
backbone (its region features pooled from the patch tokens), ``chextriev train`` trains on an
encoder's files (the feature cache keyed by the encoder's identity), the checkpoint rebuilds the
encoder without the files, and Grad-CAM explains the trained head on the token grid."""

from __future__ import annotations

import shutil

import encoder_files
import numpy as np
import pytest
import torch

from chextriev.model.build import build_from_config
from chextriev.model.config import VARIANTS, get_config
from chextriev.model.encoders.files import resolve_encoder

SMALL = {"width": 32, "heads": 2, "head_dim": 16, "ff_width": 64, "gcn_hidden": 64, "code_dim": 16}


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return encoder_files.write_dinov2(tmp_path_factory.mktemp("dino") / "rad-dino", image_size=56)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_runs_on_an_encoders_tokens(variant, dino, tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    spec = resolve_encoder("rad-dino", dino).spec
    options = {**SMALL, "backbone": "rad-dino", "backbone_weights": str(dino), "encoder": spec, "image_size": 56}
    model = build_from_config(get_config(variant, **options))
    inputs = torch.nn.functional.interpolate(images, size=(56, 56), mode="bilinear")
    boxes = boxes * 56 / 64
    output = model(inputs, boxes)
    assert torch.isfinite(model.loss(output, labels, region_labels))
    if VARIANTS[variant].has_regions:
        assert model.extract(inputs, boxes).shape == (4, 18, 32)  # the tokens' width


def test_v6_trains_on_a_frozen_encoder_and_its_checkpoint_stands_alone(dino, tiny_records, tmp_path):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image
    from chextriev.localization import heatmap
    from chextriev.training.fit import train_records

    weights = tmp_path / "rad-dino"
    shutil.copytree(dino, weights)
    cache = tmp_path / "cache"
    common = {"preset": "tiny", "max_epochs": 1, "progress": False, "cache_dir": cache,
              "backbone_weights": str(weights), "model_overrides": {"backbone": "rad-dino"}}
    result = train_records(tiny_records, tmp_path / "v6", variant="v6", **common)
    files = sorted(cache.rglob("*.npy"))
    assert files and np.load(files[0]).shape == (18, 32)  # region tokens cached, pooled from the grid
    again = train_records(tiny_records, tmp_path / "v0", variant="v0-image", **common)
    assert again.best.is_file() and len(sorted(cache.rglob("*.npy"))) == len(files)  # the same features reused
    shutil.rmtree(weights)  # the checkpoint alone rebuilds the encoder
    loaded = load_checkpoint(result.best, precision="fp32")
    assert loaded.config.backbone == "rad-dino" and loaded.config.image_size == 56 and loaded.has_findings
    assert loaded.max_input_side is None  # the encoder's own resize reads the original
    images = [load_image(r.source) for r in tiny_records[:3]]
    batch = embed_images(loaded, images, [r.boxes for r in tiny_records[:3]])
    assert batch.embeddings.shape == (3, 64) and batch.region_probabilities.shape == (3, 18, 9)
    heat = heatmap(loaded, images[0], tiny_records[0].boxes, loaded.class_names[0])
    assert heat.shape == images[0].shape and np.isfinite(heat).all() and heat.max() <= 1.0


def test_train_cli_takes_an_encoder_and_its_files(dino, tmp_path):
    from chextriev_cli.main import main

    archive = tmp_path / "archive"
    assert main(["synth", "--out", str(archive), "--patients", "4", "--seed", "0", "--size", "96"]) == 0
    code = main(["train", "--data", str(archive), "--out", str(tmp_path / "run"), "--variant", "v6", "--preset",
                 "tiny", "--epochs", "1", "--backbone", "rad-dino", "--backbone-weights", str(dino),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0 and (tmp_path / "run" / "best.ckpt").is_file()
