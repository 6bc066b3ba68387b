"""Checkpoint reload and the embed_images contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chextriev.checkpoint import (
    CheckpointError,
    LoadedModel,
    derive_checkpoint,
    load_checkpoint,
    save_model_checkpoint,
)
from chextriev.embedding import embed_features, embed_images
from chextriev.io.images import load_image
from chextriev.training.data import cache_features
from chextriev.training.feature_cache import FeatureCache


def test_model_checkpoint_reload_identical_embeddings(tiny_checkpoint, tiny_records):
    images = [load_image(r.source) for r in tiny_records[:5]]
    boxes = [r.boxes for r in tiny_records[:5]]
    first = embed_images(load_checkpoint(tiny_checkpoint), images, boxes)
    second = embed_images(load_checkpoint(tiny_checkpoint), images, boxes, batch_size=2)
    np.testing.assert_allclose(first.embeddings, second.embeddings, atol=1e-6)
    np.testing.assert_allclose(first.region_embeddings, second.region_embeddings, atol=1e-6)


def test_model_checkpoint_carries_everything(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.variant == "v6" and loaded.image_size == 64 and loaded.embedding_dim == 64
    assert loaded.class_names[0] == "lung opacity" and loaded.has_regions and not loaded.binary
    assert len(loaded.checkpoint_id) == 16 and not loaded.model.training
    assert loaded.config.adjacency is not None and loaded.box_provider.atlas.counts.sum() > 0
    assert loaded.model.graph.edges.grid.shape == (18, 18, 64)


def test_model_checkpoint_of_the_earlier_layout_says_retrain(tiny_checkpoint, tmp_path):
    import torch

    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert data["hyper_parameters"]["model_format"] == 2
    del data["hyper_parameters"]["model_format"]  # what checkpoints before the shared head hold
    torch.save(data, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="model format 1.*retrain"):
        load_checkpoint(tmp_path / "old.ckpt")


def test_model_checkpoint_saved_without_training_loads_as_the_model(tiny_records, tmp_path):
    """save_model_checkpoint (untrained and random-weight models of the benchmarks and tests):
    the file loads like a trained one and embeds exactly as the in-memory model does."""
    from chextriev.anatomy.atlas import Atlas
    from chextriev.model import TINY, build_model

    torch.manual_seed(3)
    model = build_model("v6", **TINY)
    atlas = Atlas.fit(tiny_records)
    path = save_model_checkpoint(tmp_path / "sub" / "random.ckpt", model, variant="v6", atlas=atlas,
                                 feature_scale_rule="absolute 0.001")
    assert [p.name for p in path.parent.iterdir()] == ["random.ckpt"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert loaded.variant == "v6" and loaded.class_names == tuple(model.config.class_names)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["feature_scale_rule"] == "absolute 0.001"
    assert np.array_equal(loaded.box_provider.atlas.counts, atlas.counts)
    images = [load_image(r.source) for r in tiny_records[:4]]
    boxes = [r.boxes for r in tiny_records[:4]]
    in_memory = embed_images(LoadedModel.from_model(model, atlas=atlas), images, boxes)
    np.testing.assert_array_equal(embed_images(loaded, images, boxes).embeddings, in_memory.embeddings)


def test_model_checkpoint_derived_with_another_config(tiny_checkpoint, tmp_path):
    """derive_checkpoint (the sweep's ath-binary from the ath run): same weights and thresholds,
    the changed config field and the new variant name; a change that is no config field is refused."""
    derived = derive_checkpoint(tiny_checkpoint, tmp_path / "binary" / "best.ckpt", variant="v6-binary", binary=True)
    source, loaded = load_checkpoint(tiny_checkpoint), load_checkpoint(derived)
    assert loaded.binary and not source.binary and loaded.variant == "v6-binary"
    assert loaded.config == source.config.__class__(**{**source.config.__dict__, "binary": True})
    np.testing.assert_array_equal(loaded.thresholds, source.thresholds)
    for (name, a), (_, b) in zip(source.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="not_a_field: not a field"):
        derive_checkpoint(tiny_checkpoint, tmp_path / "other.ckpt", variant="x", not_a_field=1)
    assert not (tmp_path / "other.ckpt").exists()


def test_model_checkpoint_missing_file_is_typed(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_model_embed_images_contract(tiny_checkpoint, tiny_records):
    loaded = load_checkpoint(tiny_checkpoint)
    images = [load_image(r.source) for r in tiny_records[:3]]
    images[2] = np.pad(images[2], ((0, 16), (0, 0)))  # a non-square image (80 x 64)
    given = tiny_records[0].boxes.copy()
    given[5] = np.nan  # a missing region
    batch = embed_images(loaded, images, boxes=[given, None, None])
    assert batch.embeddings.shape == (3, 64) and batch.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch.embeddings, axis=1), 1.0, atol=1e-5)
    assert batch.probabilities.shape == (3, 9) and ((batch.probabilities >= 0) & (batch.probabilities <= 1)).all()
    assert batch.region_probabilities.shape == (3, 18, 9)
    assert batch.region_embeddings.shape == (3, 18, 64)
    norms = np.linalg.norm(batch.region_embeddings, axis=2)
    assert norms[0, 5] == 0.0
    np.testing.assert_allclose(np.delete(norms[0], 5), 1.0, atol=1e-5)
    assert batch.box_sources == ["given", "atlas", "atlas"]
    assert batch.boxes.shape == (3, 18, 4) and np.isnan(batch.boxes[0, 5]).all()
    assert batch.boxes[2, :, 3].max() > 64  # atlas boxes in the 80-row image's own pixels
    assert len(embed_images(loaded, [])) == 0


def test_model_validation_path_equals_embed_images(tiny_checkpoint, tiny_records, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    records = tiny_records[:4]
    dataset = cache_features(loaded.model, records, loaded.box_provider.atlas, FeatureCache(tmp_path))
    features = torch.stack([dataset[i]["features"] for i in range(4)])
    masks = torch.stack([dataset[i]["mask"] for i in range(4)])
    cached = embed_features(loaded.model, features, masks)
    direct = embed_images(loaded, [load_image(r.source) for r in records], [r.boxes for r in records])
    np.testing.assert_allclose(cached["embeddings"], direct.embeddings, atol=1e-5)


def test_model_feature_cache_hits(tiny_checkpoint, tiny_records, tmp_path):
    loaded = load_checkpoint(tiny_checkpoint)
    cache = FeatureCache(tmp_path)
    cache_features(loaded.model, tiny_records[:3], loaded.box_provider.atlas, cache)
    assert (cache.hits, cache.misses) == (0, 3)
    cache_features(loaded.model, tiny_records[:3], loaded.box_provider.atlas, cache)
    assert (cache.hits, cache.misses) == (3, 3)
    moved = [r for r in tiny_records[:1]]
    moved[0] = type(moved[0])(**{**moved[0].__dict__, "boxes": moved[0].boxes + 1.0})
    cache_features(loaded.model, moved, loaded.box_provider.atlas, cache)
    assert cache.misses == 4  # other boxes: another key


@pytest.mark.parametrize("variant", ["resnet50", "ath-binary"])
def test_model_global_baselines_embed(variant, tiny_records, tmp_path):
    from chextriev.training.quick import train_tiny_checkpoint

    loaded = load_checkpoint(train_tiny_checkpoint(tiny_records, tmp_path, variant=variant))
    batch = embed_images(loaded, [load_image(r.source) for r in tiny_records[:3]])
    assert batch.region_probabilities is None and batch.region_embeddings is None
    assert batch.box_sources == ["atlas"] * 3
    np.testing.assert_allclose(np.linalg.norm(batch.embeddings, axis=1), 1.0, atol=1e-5)
    if variant == "ath-binary":
        assert batch.binary_codes.shape == (3, 16) and set(np.unique(batch.binary_codes)) <= {0, 1}
        assert loaded.binary
        np.testing.assert_allclose(np.abs(batch.embeddings), 0.25, atol=1e-6)  # sign / sqrt(16)
