"""Shapes of every variant and baseline, roi vs crop agreement, config errors."""

from __future__ import annotations

import pytest
import torch

from chextriev.errors import UnknownNameError
from chextriev.model import TINY, VARIANTS, ModelConfig, build_model, get_config


def test_model_unknown_variant_lists_valid():
    with pytest.raises(UnknownNameError) as info:
        build_model("v7")
    assert "v6" in str(info.value) and "anaxnet" in str(info.value)
    with pytest.raises(UnknownNameError):
        get_config("v6", not_an_option=1)
    with pytest.raises(UnknownNameError):
        get_config("v6", edges="bogus")


def test_model_variant_table_matches_spec():
    assert list(VARIANTS) == ["resnet50", "ath", "ath-binary", "anaxnet", "v0-image", "v0-anatomy", "v1", "v2",
                              "v3", "v4", "v5", "v6", "v6-published-code", "resnet50-projected",
                              "anaxnet-gcnconv"]  # the published table's order, then our improvements
    v = VARIANTS
    assert (v["v1"].edges, v["v1"].abs_pos, v["v1"].graph_importance) == ("adjacency", False, 1.0)
    assert (v["v2"].edges, v["v2"].abs_pos) == ("uniform", False)
    assert (v["v3"].edges, v["v3"].abs_pos) == ("uniform", True)
    assert (v["v4"].edges, v["v4"].gated_residual, v["v4"].residual, v["v4"].abs_pos, v["v4"].graph_importance) == (
        "learned", True, "global", True, 0.0)
    assert (v["v5"].edges, v["v5"].gated_residual, v["v5"].residual, v["v5"].abs_pos) == ("learned", True, "global", False)
    assert (v["v6"].edges, v["v6"].abs_pos, v["v6"].gated_residual, v["v6"].residual) == ("learned", True, False, "layer")
    assert v["v0-image"].graph == "none" and v["v0-anatomy"].graph_importance == 0.0
    assert v["v6"].width == 1024 and v["v6"].heads == 8 and v["v6"].head_dim == 64 and v["v6"].ff_width == 4096
    assert v["v6"].num_layers == 2
    # published baselines under their names, improvements under their own
    assert (v["ath"].code_dim, v["ath"].image_size, v["ath"].triplet_margin) == (32, 256, 0.5)
    assert (v["anaxnet"].graph_conv, v["anaxnet"].anaxnet_embedding) == ("raw", "layernorm")
    assert (v["anaxnet-gcnconv"].graph_conv, v["anaxnet-gcnconv"].anaxnet_embedding) == ("gcnconv", "l2")


def test_model_config_round_trip():
    config = get_config("v1", **TINY)
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_shapes_every_variant(name, tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    torch.manual_seed(0)
    model = build_model(name, **TINY)
    out = model(images, boxes)
    embedding = model.retrieval_embedding(out)
    assert embedding.shape == (4, model.embedding_dim)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(4), atol=1e-5)
    assert out.graph_logits.shape == (4, 9)
    if model.config.has_regions:
        assert out.node_logits.shape == (4, 18, 9)
        assert out.node_embeddings.shape == (4, 18, 64)
        assert not bool(out.mask[0, 3]) and bool(out.mask[1, 3])
        assert float(out.node_embeddings[0, 3].abs().sum()) == 0.0
    else:
        assert out.node_logits is None and out.node_embeddings is None
    loss = model.loss(out, labels, region_labels)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_model_roi_and_crop_agree_in_shape_and_masking(tiny_batch):
    images, boxes, _, _ = tiny_batch
    outputs = {}
    for mode in ("roi", "crop"):
        torch.manual_seed(0)
        model = build_model("v6", **TINY, feature_mode=mode).eval()
        with torch.no_grad():
            features = model.extract(images, boxes)
            outputs[mode] = (features, model(images, boxes))
    (f_roi, o_roi), (f_crop, o_crop) = outputs["roi"], outputs["crop"]
    assert f_roi.shape == f_crop.shape == (4, 18, 512)
    assert o_roi.node_embeddings.shape == o_crop.node_embeddings.shape
    assert torch.equal(o_roi.mask, o_crop.mask)
    for f in (f_roi, f_crop):
        assert float(f[0, 3].abs().sum()) == 0.0 and float(f[1, 3].abs().sum()) > 0.0
    assert not torch.allclose(f_roi, f_crop)  # the two modes really compute different features


def test_model_all_regions_missing_is_finite(tiny_batch):
    images, boxes, _, _ = tiny_batch
    boxes = boxes.clone()
    boxes[1] = float("nan")
    model = build_model("v6", **TINY).eval()
    with torch.no_grad():
        out = model(images, boxes)
    assert torch.isfinite(out.embedding).all() and torch.isfinite(out.graph_logits).all()


def test_model_config_reads_retired_fields_of_this_format():
    """Checkpoints written before ath-batchall was removed still load; the removed option fails."""
    data = get_config("ath", **TINY).to_dict()
    old = {**data, "ath_network": "published", "triplet": "published", "ath_channels": [8, 16]}
    assert ModelConfig.from_dict(old) == ModelConfig.from_dict(data)
    with pytest.raises(UnknownNameError, match="retired ath_network"):
        ModelConfig.from_dict({**data, "ath_network": "stages"})
