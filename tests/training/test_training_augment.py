"""Training augmentation: boxes move with the image, side-safe flips, centre crop at test, presets."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from chextriev.anatomy.atlas import default_template
from chextriev.errors import UnknownNameError
from chextriev.model import TINY, build_model
from chextriev.model.config import get_config
from chextriev.model.preprocess import MIN_BOX_SIDE, center_crop, input_boxes, prepare_input
from chextriev.training.augment import (
    AUGMENTATIONS,
    MIRROR,
    AugmentConfig,
    Augmenter,
    flip_allowed,
    get_augmentation,
    side_bound,
)
from chextriev.training.presets import PRESETS
from chextriev.vocab import CHEXPERT_OBSERVATIONS, IMAGENOME_FINDINGS, REGIONS

H, W = 120, 100
LUNG_ONLY = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0], np.float32)  # lung opacity, pleural effusion


def boxes() -> np.ndarray:
    out = default_template().astype(np.float32).copy()
    out[:, [0, 2]] *= W
    out[:, [1, 3]] *= H
    return out


def test_mirror_swaps_left_and_right_regions_and_keeps_the_midline():
    for r, name in enumerate(REGIONS):
        other = REGIONS[MIRROR[r]]
        if "right" in name:
            assert other == name.replace("right", "left")
        elif "left" in name:
            assert other == name.replace("left", "right")
        else:
            assert MIRROR[r] == r
    assert [MIRROR[m] for m in MIRROR] == list(range(len(REGIONS)))


def test_flip_allowed_only_when_no_side_bound_finding_is_positive_or_unknown():
    names = IMAGENOME_FINDINGS
    assert flip_allowed(LUNG_ONLY, names)
    assert flip_allowed(np.zeros(9, np.float32), names)
    cardiac = LUNG_ONLY.copy()
    cardiac[names.index("enlarged cardiac silhouette")] = 1
    assert not flip_allowed(cardiac, names)
    unknown = LUNG_ONLY.copy()
    unknown[names.index("fluid overload/heart failure")] = np.nan
    assert not flip_allowed(unknown, names)
    assert not flip_allowed(None, names)
    assert not flip_allowed(LUNG_ONLY, names, {"dextrocardia": True})
    assert not flip_allowed(LUNG_ONLY, names, {"situs_inversus": 1})
    chexpert = np.zeros(len(CHEXPERT_OBSERVATIONS), np.float32)
    chexpert[CHEXPERT_OBSERVATIONS.index("Cardiomegaly")] = 1
    assert not flip_allowed(chexpert, CHEXPERT_OBSERVATIONS)
    assert side_bound("Left lower lobe collapse") and side_bound("Hernia") and not side_bound("Pneumothorax")


def _marked_image(region: int) -> np.ndarray:
    image = np.zeros((H, W), np.float32)
    x1, y1, x2, y2 = np.round(boxes()[region]).astype(int)
    image[y1 + 1:y2 - 1, x1 + 1:x2 - 1] = 1.0
    return image


def test_flip_mirrors_the_image_and_swaps_region_boxes_and_labels():
    torch.manual_seed(0)
    augmenter = Augmenter(AugmentConfig(name="flip", flip=1.0), IMAGENOME_FINDINGS)
    region_labels = np.zeros((18, 9), np.float32)
    region_labels[2, 0] = 1  # right upper lung zone
    image = _marked_image(2)
    out, out_boxes, out_region = augmenter(image, boxes(), region_labels, LUNG_ONLY)
    np.testing.assert_allclose(out.numpy(), image[:, ::-1])
    left_upper = MIRROR[2]
    assert out_region[left_upper, 0] == 1 and out_region[2, 0] == 0
    original = boxes()
    for r in range(18):
        x1, y1, x2, y2 = original[MIRROR[r]]
        np.testing.assert_allclose(out_boxes[r], [W - x2, y1, W - x1, y2], atol=1e-4)
    # the mark now lies inside the box that carries its label
    ys, xs = np.nonzero(out.numpy() > 0.5)
    x1, y1, x2, y2 = out_boxes[left_upper]
    assert xs.min() >= x1 and xs.max() <= x2 and ys.min() >= y1 and ys.max() <= y2


def test_no_flip_where_the_findings_forbid_it():
    torch.manual_seed(0)
    augmenter = Augmenter(AugmentConfig(name="flip", flip=1.0), IMAGENOME_FINDINGS)
    labels = LUNG_ONLY.copy()
    labels[3] = 1  # enlarged cardiac silhouette
    image = _marked_image(2)
    out, out_boxes, _ = augmenter(image, boxes(), np.zeros((18, 9), np.float32), labels)
    np.testing.assert_allclose(out.numpy(), image)
    np.testing.assert_allclose(out_boxes, boxes(), atol=1e-4)


def test_shift_moves_boxes_with_the_image_content():
    augmenter = Augmenter(AugmentConfig(name="shift", shift=0.2), IMAGENOME_FINDINGS)
    region = 16  # cardiac silhouette
    image = _marked_image(region)
    moved = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out, out_boxes, _ = augmenter(image, boxes(), np.zeros((18, 9), np.float32), LUNG_ONLY)
        ys, xs = np.nonzero(out.numpy() > 0.5)
        x1, y1, x2, y2 = out_boxes[region]
        # the bright square (1 px inside the box) sits inside the moved box, within 1.5 px
        assert xs.min() >= x1 - 1.5 and xs.max() <= x2 + 1.5 and ys.min() >= y1 - 1.5 and ys.max() <= y2 + 1.5
        moved += not np.allclose(out_boxes[region], boxes()[region], atol=0.5)
    assert moved >= 4


def test_boxes_stay_valid_under_strong_augmentation():
    strong = AugmentConfig(name="strong", crop=0.5, shift=0.3, rotation=40, scale=(0.5, 1.5), perspective=0.5,
                           brightness=0.5, contrast=0.5, flip=0.5)
    augmenter = Augmenter(strong, IMAGENOME_FINDINGS)
    rng = np.random.default_rng(0)
    dropped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        image = rng.random((H, W)).astype(np.float32)
        out, out_boxes, region = augmenter(image, boxes(), np.ones((18, 9), np.float32), LUNG_ONLY)
        h, w = out.shape
        assert out.min() >= 0 and out.max() <= 1
        present = ~np.isnan(out_boxes).any(axis=1)
        kept = out_boxes[present]
        assert (kept[:, 0] >= 0).all() and (kept[:, 2] <= w).all() and (kept[:, 1] >= 0).all() and (kept[:, 3] <= h).all()
        assert ((kept[:, 2] - kept[:, 0]) >= MIN_BOX_SIDE).all() and ((kept[:, 3] - kept[:, 1]) >= MIN_BOX_SIDE).all()
        assert np.isnan(region[~present]).all() and (region[present] == 1).all()
        dropped += int((~present).sum())
    assert dropped > 0  # the setting is strong enough to push some regions out; they are masked


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_missing_boxes_stay_missing(flip):
    torch.manual_seed(0)
    given = boxes()
    given[5] = np.nan  # right hilar structures: the left one's row after a flip
    _, out_boxes, _ = Augmenter(replace(AUGMENTATIONS["standard"], flip=flip), IMAGENOME_FINDINGS)(
        np.random.rand(H, W).astype(np.float32), given, np.zeros((18, 9), np.float32), LUNG_ONLY)
    missing = MIRROR[5] if flip else 5
    assert np.isnan(out_boxes[missing]).all()
    assert not np.isnan(np.delete(out_boxes, missing, axis=0)).all(axis=1).all()


def test_augmentation_names_and_validation():
    assert get_augmentation(None) == AUGMENTATIONS["none"] and not AUGMENTATIONS["none"].enabled
    assert get_augmentation("standard").enabled
    assert get_augmentation(AUGMENTATIONS["standard"].to_dict()) == AUGMENTATIONS["standard"]
    with pytest.raises(UnknownNameError, match="standard"):
        get_augmentation("heavy")
    with pytest.raises(ValueError):
        AugmentConfig(crop=0)
    assert AUGMENTATIONS["standard"].test_center_crop == pytest.approx(0.925)
    assert AUGMENTATIONS["none"].test_center_crop == 1.0


def test_published_presets_do_not_augment_the_named_ones_do():
    assert PRESETS["mimic"].augment == "none" and PRESETS["synthetic-small"].augment == "none"
    assert PRESETS["mimic-aug"].augment == "standard" and PRESETS["synthetic-small-aug"].augment == "standard"
    assert replace(PRESETS["mimic-aug"], name="mimic", augment="none") == PRESETS["mimic"]


def test_center_crop_at_test_is_part_of_the_model_input():
    config = get_config("v6", **TINY, center_crop=0.8)
    image = np.random.default_rng(0).random((H, W)).astype(np.float32)
    inputs, model_boxes = prepare_input(config, image, boxes())
    cropped, cropped_boxes = center_crop(image, boxes(), 0.8)
    assert cropped.shape == (96, 80)
    expected, expected_boxes = prepare_input(replace(config, center_crop=1.0), cropped, cropped_boxes)
    torch.testing.assert_close(inputs, expected)
    np.testing.assert_allclose(model_boxes.numpy(), expected_boxes.numpy(), equal_nan=True)
    np.testing.assert_allclose(input_boxes(config, boxes(), (H, W)), model_boxes.numpy(), equal_nan=True)
    model = build_model("v6", **TINY, center_crop=0.8)
    # the centre window is cut from the original before the resize: no pre-shrink is exact, the
    # model is handed the original (chextriev.io.pixels.model_pixels)
    assert model.max_input_side is None
    with pytest.raises(ValueError):
        get_config("v6", center_crop=0.0)


def test_center_crop_changes_the_feature_cache_key():
    from chextriev.training.feature_cache import config_signature

    plain = get_config("v6", **TINY)
    assert config_signature(plain) != config_signature(replace(plain, center_crop=0.9))


def test_augmented_training_bypasses_the_cache_for_the_training_split(tiny_records, tmp_path, caplog):
    from chextriev.checkpoint import load_checkpoint, read_checkpoint
    from chextriev.training.fit import train_records

    with caplog.at_level(logging.INFO, logger="chextriev.training.data"):
        result = train_records(tiny_records, tmp_path / "run", variant="v6", preset="tiny", max_epochs=1,
                               progress=False, cache_dir=tmp_path / "cache", augment="standard")
    assert any("cannot come from the frozen-feature cache" in r.getMessage() for r in caplog.records)
    loaded = load_checkpoint(result.best)
    assert loaded.config.center_crop == pytest.approx(0.925)
    assert read_checkpoint(result.best)["hyper_parameters"]["augmentation"]["name"] == "standard"
    # training features are cached once, un-augmented, only to fit the feature standardisation
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(tiny_records)


def test_augmented_dataset_gives_new_inputs_each_time_and_plain_validation(tiny_records, tmp_path):
    from chextriev.anatomy.atlas import Atlas
    from chextriev.training.data import (
        FeatureDataset,
        ImageDataset,
        RetrievalDataModule,
        split_records,
    )
    from chextriev.training.feature_cache import FeatureCache

    splits = split_records(tiny_records)
    model = build_model("v6", **TINY, center_crop=0.925)
    data = RetrievalDataModule(splits, model, Atlas.default(), batch_size=4, cache=FeatureCache(tmp_path / "c"),
                               augment=AUGMENTATIONS["standard"])
    data.setup("fit")
    assert isinstance(data.datasets["train"], ImageDataset) and isinstance(data.datasets["validate"], FeatureDataset)
    torch.manual_seed(0)
    first, second = data.datasets["train"][0], data.datasets["train"][0]
    assert first["image"].shape == (1, 64, 64)
    assert not torch.equal(first["image"], second["image"])
    batch = next(iter(data.train_dataloader()))
    output = model(batch["image"], batch["boxes"])  # the backbone runs on every training batch
    assert torch.isfinite(model.loss(output, batch["labels"], batch["region_labels"]))
