"""The feature standardisation's scale (issue 15): the absolute 1e-3 floor in use, the relative
floor that was measured and not adopted, and checkpoints keeping what they stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chextriev.checkpoint import load_checkpoint
from chextriev.embedding import embed_images
from chextriev.io.images import load_image
from chextriev.model.build import build_model
from chextriev.model.config import TINY
from chextriev.model.region_features import SCALE_FLOOR, feature_scale


def _features(seed: int = 0, rows: int = 200, channels: int = 64) -> torch.Tensor:
    """Rows like a random-init backbone's: most channels spread ~0.3-0.6, one dead, one sparse
    (fires on one row in a hundred with a tiny value)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(rows, channels, generator=generator) * 2.0
    features[:, 0] = 0.0  # dead after the ReLU
    features[:, 1] = 0.0
    features[::100, 1] = 2e-4  # sparse: std ~3e-5
    return features


def test_feature_scale_in_use_is_the_absolute_floor():
    std = _features().std(dim=0)
    scale = feature_scale(std)
    assert SCALE_FLOOR == 1e-3
    torch.testing.assert_close(scale, std.clamp_min(1e-3))


def test_feature_scale_relative_floors_sparse_and_dead_channels_at_a_fraction_of_the_median():
    std = _features().std(dim=0)
    scale = feature_scale(std, relative=0.03)
    typical = float(std[std > 0].median())
    assert float(std[1]) < 1e-3
    assert float(scale.min()) >= 0.03 * typical * (1 - 1e-6)
    assert float(scale[0]) == float(scale[1]) == pytest.approx(0.03 * typical, rel=1e-6)
    torch.testing.assert_close(scale[2:], std[2:])  # ordinary channels keep their own std


@pytest.mark.parametrize("relative", [None, 0.03])
def test_feature_scale_degenerate_fits_stay_finite(relative):
    for std in (torch.zeros(8), torch.full((8,), float("nan"))):  # nothing varies; a single row
        scale = feature_scale(std, relative=relative)
        assert torch.isfinite(scale).all() and bool((scale > 0).all())
        assert torch.isfinite(torch.ones(8) / scale).all()


def test_feature_scale_relative_is_invariant_to_the_feature_magnitude_absolute_is_not():
    """Features 1000x smaller standardise to the same values under the relative floor; under
    the absolute floor in use they do not (why torchxrayvision-scale features differ)."""
    features = _features()
    new = features[:7] * 30.0  # unseen rows, the sparse channel firing
    new[:, 1] = 0.05

    def standardised(factor: float, relative: float | None) -> torch.Tensor:
        fitted = features * factor
        return (new * factor - fitted.mean(dim=0)) / feature_scale(fitted.std(dim=0), relative=relative)

    torch.testing.assert_close(standardised(1e-3, 0.03), standardised(1.0, 0.03), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(standardised(1e3, 0.03), standardised(1.0, 0.03), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(standardised(1e-3, None), standardised(1.0, None), rtol=1e-2, atol=1e-2)
    # the sparse channel: 0.05 / 1e-3 = 50 under the absolute floor, whatever the typical spread
    assert float(standardised(1.0, None)[:, 1].max()) == pytest.approx(50.0, rel=1e-3)


def test_set_feature_stats_uses_feature_scale():
    regions = build_model("v6", **TINY).regions
    features = torch.cat([_features(), torch.rand(200, regions.config.feature_dim - 64)], dim=1)
    regions.set_feature_stats(features.mean(dim=0), features.std(dim=0))
    torch.testing.assert_close(regions.feature_scale, feature_scale(features.std(dim=0)))
    torch.testing.assert_close(regions.feature_shift, features.mean(dim=0))


def test_checkpoint_keeps_its_stored_feature_scale(tiny_checkpoint, tiny_records, tmp_path):
    """A checkpoint fitted under another rule loads with the scale it stored, bit for bit, and
    embeds with it: nothing refits on load."""
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    key = "model.regions.feature_scale"
    stored = data["state_dict"][key].clone()
    stored[:5] = 0.25  # e.g. a relative floor
    data["state_dict"][key] = stored
    torch.save(data, tmp_path / "other-rule.ckpt")
    loaded = load_checkpoint(tmp_path / "other-rule.ckpt")
    assert torch.equal(loaded.model.regions.feature_scale, stored)
    images = [load_image(r.source) for r in tiny_records[:3]]
    boxes = [r.boxes for r in tiny_records[:3]]
    first = embed_images(loaded, images, boxes).embeddings
    again = embed_images(load_checkpoint(tmp_path / "other-rule.ckpt"), images, boxes).embeddings
    np.testing.assert_array_equal(first, again)
    other = embed_images(load_checkpoint(tiny_checkpoint), images, boxes).embeddings
    assert not np.allclose(first, other, atol=1e-6)  # the stored scale is what it used
