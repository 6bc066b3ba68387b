from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.provider import BoxProvider
from chextriev.errors import UnknownNameError
from chextriev.localization.cam import (
    METHODS,
    CamPipeline,
    CamUnsupportedError,
    class_index,
    heatmap,
)
from chextriev.model import TINY, build_model


def _blob_images(rng, n, size=64, positive_fraction=0.5):
    """Noise images; positives carry one bright Gaussian blob. Returns images, labels, boxes."""
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels, boxes = [], [], []
    for _ in range(n):
        image = rng.normal(0.3, 0.08, (size, size)).astype(np.float32)
        positive = rng.random() < positive_fraction
        box = None
        if positive:
            cx, cy = rng.uniform(10, size - 10, 2)
            image += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))
            box = (cx - 6, cy - 6, cx + 6, cy + 6)
        images.append(np.clip(image, 0, 1))
        labels.append(float(positive))
        boxes.append(box)
    return images, np.array(labels, np.float32), boxes


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(16, 2)  # class 0: blob; class 1: never trained

    def head(self, feature_map):
        return self.classifier(feature_map.mean(dim=(2, 3)))

    def forward(self, images):
        return self.head(self.body(images))


@pytest.fixture(scope="module")
def trained_blob_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyCNN()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster on a shared CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(100):
        images, labels, _ = _blob_images(rng, 16)
        x = torch.from_numpy(np.stack(images))[:, None]
        logits = model(x)[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.eval()
    return model


@pytest.mark.slow  # trains a tiny CNN for 100 steps (a few seconds on an idle CPU)
@pytest.mark.parametrize("method", METHODS)
def test_heatmap_peaks_inside_lesion_more_often_than_chance(trained_blob_model, method):
    model = trained_blob_model
    pipeline = CamPipeline(model.body, model.head, 64, ("blob", "other"),
                           linear_weights=model.classifier.weight.detach())
    images, _, boxes = _blob_images(np.random.default_rng(1), 40, positive_fraction=1.0)
    hits, area = 0, 0.0
    for image, (x1, y1, x2, y2) in zip(images, boxes):
        heat = heatmap(pipeline, image, None, "blob", method=method)
        assert heat.shape == image.shape and heat.min() >= 0 and heat.max() <= 1
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        hits += (x1 <= x + 0.5 <= x2) and (y1 <= y + 0.5 <= y2)
        area += (x2 - x1) * (y2 - y1) / heat.size
    rate, chance = hits / len(images), area / len(images)
    assert rate > 0.6 and rate > 5 * chance, (method, rate, chance)


def test_class_index_errors():
    names = ("a", "b")
    assert class_index(names, "b") == 1 and class_index(names, 0) == 0
    with pytest.raises(UnknownNameError, match="a, b"):
        class_index(names, "c")
    with pytest.raises(UnknownNameError):
        class_index(names, 5)


@pytest.mark.parametrize("variant", ["v6", "resnet50", "ath", "anaxnet"])
def test_model_adapters_give_image_sized_maps(variant):
    torch.manual_seed(0)
    overrides = dict(TINY, image_size=64) if variant != "ath" else dict(TINY)
    model = build_model(variant, **overrides).eval()
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    for method in METHODS:
        heat = heatmap(model, image, None, "pleural effusion", method=method)
        assert heat.shape == (70, 90) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        assert np.isfinite(heat).all()
        # min-max normalised (or all zero): the one mask rule, a fraction of the maximum, is then
        # the min-max rule the localization figures were measured with
        assert heat.min() == 0.0 and heat.max() in (0.0, 1.0)
    assert not model.training
    with pytest.raises(UnknownNameError, match="pleural effusion"):
        heatmap(model, image, None, "no such finding")
    with pytest.raises(UnknownNameError, match="gradcampp"):
        heatmap(model, image, None, 0, method="lime")


def test_region_model_uses_given_boxes_and_box_provider():
    torch.manual_seed(0)
    # 128 px: a 4x4 feature map (at 96 px the 3x3 map can keep a single positive cell after the
    # ReLU, and both heatmaps normalise to the same picture)
    model = build_model("v6", **dict(TINY, image_size=128)).eval()
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    full = heatmap(model, image, Atlas.default().boxes_for(128, 128), 0)
    left = Atlas.default().boxes_for(128, 128)
    left[7:] = np.nan  # only right-lung regions (image left) present
    partial = heatmap(model, image, left, 0)
    assert not np.allclose(full, partial)

    class SpyProvider(BoxProvider):
        calls = 0

        def boxes_for(self, images):
            SpyProvider.calls += 1
            return super().boxes_for(images)

    loaded = SimpleNamespace(model=model, box_provider=SpyProvider(Atlas.default()),
                             class_names=model.config.class_names, image_size=128)
    via_loaded = heatmap(loaded, image, None, 0)
    assert SpyProvider.calls == 1
    np.testing.assert_allclose(via_loaded, full, atol=1e-5)


def test_crop_mode_is_refused_with_a_reason():
    model = build_model("v6", **dict(TINY, feature_mode="crop")).eval()
    with pytest.raises(CamUnsupportedError, match="roi"):
        heatmap(model, np.zeros((64, 64), np.float32), None, 0)
