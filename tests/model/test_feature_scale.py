"""The feature standardisation's scale: floored relative to the typical channel spread (issue 15)."""

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
    """Rows like a random-init backbone's: most channels spread ~1, one dead, one sparse (fires
    on one row in a hundred with a tiny value)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(rows, channels, generator=generator) * 2.0
    features[:, 0] = 0.0  # dead after the ReLU
    features[:, 1] = 0.0
    features[::100, 1] = 2e-4  # sparse: std ~3e-5
    return features


def test_feature_scale_floors_sparse_and_dead_channels_at_a_fraction_of_the_median():
    std = _features().std(dim=0)
    scale = feature_scale(std)
    typical = float(std[std > 0].median())
    assert float(std[1]) < 1e-3  # the former absolute floor would have kept 1e-3 here
    assert float(scale.min()) >= SCALE_FLOOR * typical * (1 - 1e-6)
    assert float(scale[0]) == float(scale[1]) == pytest.approx(SCALE_FLOOR * typical, rel=1e-6)
    torch.testing.assert_close(scale[2:], std[2:])  # ordinary channels keep their own std


def test_feature_scale_degenerate_fits_stay_finite():
    for std in (torch.zeros(8), torch.full((8,), float("nan"))):  # nothing varies; a single row
        scale = feature_scale(std)
        assert torch.isfinite(scale).all() and bool((scale > 0).all())
        assert torch.isfinite(torch.ones(8) / scale).all()


def test_feature_standardisation_is_invariant_to_the_feature_magnitude():
    """A backbone whose features are 1000x smaller (or larger) standardises to the same values;
    the former absolute floor (``std.clamp_min(1e-3)``) did not."""
    model = build_model("v6", **TINY).eval()
    regions = model.regions
    features = torch.cat([_features(), torch.rand(200, regions.config.feature_dim - 64)], dim=1)
    new = features[:7] * 30.0  # unseen rows, the sparse channel firing
    new[:, 1] = 0.05
    standardised = []
    for factor in (1.0, 1e-3, 1e3):
        fitted = features * factor
        regions.set_feature_stats(fitted.mean(dim=0), fitted.std(dim=0))
        standardised.append(regions.standardize(new * factor))
    torch.testing.assert_close(standardised[1], standardised[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(standardised[2], standardised[0], rtol=1e-4, atol=1e-4)
    # the sparse channel counts at most 1 / SCALE_FLOOR times what its raw value is worth in
    # typical spreads (the former floor: 0.05 / 1e-3 = 50, whatever the typical spread)
    std = features.std(dim=0)
    bound = 0.05 / (SCALE_FLOOR * float(std[std > 0].median()))
    assert float(standardised[0][:, 1].abs().max()) <= bound * (1 + 1e-5)
    old = [((new * f) - (features * f).mean(dim=0)) / (features * f).std(dim=0).clamp_min(1e-3)
           for f in (1.0, 1e-3)]
    assert not torch.allclose(old[0], old[1], rtol=1e-2, atol=1e-2)


def test_checkpoint_keeps_its_stored_feature_scale(tiny_checkpoint, tiny_records, tmp_path):
    """A checkpoint fitted under another rule (here the former absolute floor) loads with the
    scale it stored, bit for bit, and embeds with it: nothing refits on load."""
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    key = "model.regions.feature_scale"
    stored = data["state_dict"][key].clone()
    stored[:5] = 1e-3  # what the former rule wrote for near-constant channels
    data["state_dict"][key] = stored
    torch.save(data, tmp_path / "old-rule.ckpt")
    loaded = load_checkpoint(tmp_path / "old-rule.ckpt")
    assert torch.equal(loaded.model.regions.feature_scale, stored)
    images = [load_image(r.source) for r in tiny_records[:3]]
    boxes = [r.boxes for r in tiny_records[:3]]
    first = embed_images(loaded, images, boxes).embeddings
    again = embed_images(load_checkpoint(tmp_path / "old-rule.ckpt"), images, boxes).embeddings
    np.testing.assert_array_equal(first, again)
    other = embed_images(load_checkpoint(tiny_checkpoint), images, boxes).embeddings
    assert not np.allclose(first, other, atol=1e-6)  # the stored scale is what it used
