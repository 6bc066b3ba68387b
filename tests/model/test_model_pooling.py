"""The global classifier's poolings and attention maps (X_RAY's family): each pooling on a
hand-made feature map, PCAM against a loop-by-loop reference of the paper's formulas, every
option changing the model, and a PCAM model trained, saved and explained."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chextriev.errors import ConfigError
from chextriev.localization.adapters import CamUnsupportedError
from chextriev.model import TINY, build_model
from chextriev.model.config import ATTENTIONS, POOLINGS, get_config
from chextriev.model.pooling import (
    ChannelAttention,
    PositionAttention,
    PyramidAttention,
    build_attention,
    lse_pool,
    pcam_pool,
    pool,
)

# one image, two channels, a 2 x 3 map: channel 0 holds 0 .. 5, channel 1 is constant but for one cell
MAP = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
                     [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0 + math.log(7.0)]]]])


def test_avg_and_max_pooling_of_a_hand_made_map():
    assert pool(MAP, "avg")[0].tolist() == pytest.approx([2.5, (6 + math.log(7.0)) / 6])
    assert pool(MAP, "max")[0].tolist() == pytest.approx([5.0, 1.0 + math.log(7.0)])


def test_lse_pooling_of_a_hand_made_map():
    # channel 1 at gamma 1: log(mean(e, e, e, e, e, 7e)) = 1 + log(12 / 6) = 1 + log 2
    # channel 0 at gamma 1: log(mean(e^0 .. e^5))
    expected0 = math.log(sum(math.exp(v) for v in range(6)) / 6)
    assert lse_pool(MAP, 1.0)[0].tolist() == pytest.approx([expected0, 1.0 + math.log(2.0)], rel=1e-6)
    assert pool(MAP, "lse", 1.0).tolist() == lse_pool(MAP, 1.0).tolist()
    # the average as gamma -> 0, the maximum as gamma -> inf; stable at large gamma
    assert torch.allclose(lse_pool(MAP, 1e-4), pool(MAP, "avg"), atol=1e-3)
    assert torch.allclose(lse_pool(MAP, 1e4), pool(MAP, "max"), atol=1e-3)
    assert torch.isfinite(lse_pool(MAP * 1e3, 10.0)).all()


def test_unknown_fixed_pooling_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown fixed pooling 'pcam'; valid: avg, max, lse"):
        pool(MAP, "pcam")


def _linear(weight: np.ndarray, bias: np.ndarray):
    """``f(v)[c] = b_c + sum_f w_cf v_f``, one loop per index."""
    def f(v):
        out = []
        for c in range(weight.shape[0]):
            s = bias[c]
            for k in range(len(v)):
                s += weight[c, k] * v[k]
            out.append(s)
        return out
    return f


def _layernorm_linear(head):
    """The head ``f(v) = W LN(v) + b`` (LayerNorm: mean, biased variance, eps, affine), by loops."""
    gamma, beta = head.norm.weight.detach().numpy(), head.norm.bias.detach().numpy()
    linear = _linear(head.linear.weight.detach().numpy(), head.linear.bias.detach().numpy())

    def f(v):
        n = len(v)
        mean = sum(v) / n
        var = sum((x - mean) ** 2 for x in v) / n
        return linear([(v[k] - mean) / math.sqrt(var + head.norm.eps) * gamma[k] + beta[k] for k in range(n)])
    return f


def _pcam_reference(x: np.ndarray, f, classes: int):
    """Ye et al. 2020, one loop per index: logit map s_c(h,w) = f_c(x(h,w)), probability
    p_c = sigmoid(s_c), weights a_c = p_c / sum p_c, pooled x_c = sum a_c x, logit y_c = f_c(x_c)."""
    batch, channels, height, width = x.shape
    logits = np.zeros((batch, classes))
    pooled = np.zeros((batch, classes, channels))
    prob = np.zeros((batch, classes, height, width))
    for b in range(batch):
        for c in range(classes):
            for i in range(height):
                for j in range(width):
                    s = f([x[b, k, i, j] for k in range(channels)])[c]
                    prob[b, c, i, j] = 1.0 / (1.0 + math.exp(-s))
            total = 0.0
            for i in range(height):
                for j in range(width):
                    total += prob[b, c, i, j]
            for k in range(channels):
                acc = 0.0
                for i in range(height):
                    for j in range(width):
                        acc += prob[b, c, i, j] / total * x[b, k, i, j]
                pooled[b, c, k] = acc
            logits[b, c] = f(list(pooled[b, c]))[c]
    return logits, pooled, prob


@pytest.mark.parametrize("kind", ["linear (published 1x1 convolution)", "layernorm + linear (the head)"])
def test_pcam_matches_the_papers_formulas_loop_by_loop(kind):
    from chextriev.model.heads import Head

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, 4, generator=generator, dtype=torch.float64)
    if kind.startswith("linear"):
        classifier = torch.nn.Linear(5, 3).double()
        linear = classifier
    else:
        classifier = Head(5, 3).double()
        linear = classifier.linear
        with torch.no_grad():
            classifier.norm.weight.copy_(torch.rand(5, generator=generator, dtype=torch.float64) + 0.5)
            classifier.norm.bias.copy_(torch.randn(5, generator=generator, dtype=torch.float64))
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 5, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
        logits, pooled, prob = pcam_pool(x, classifier)
    f = (_linear(linear.weight.detach().numpy(), linear.bias.detach().numpy()) if kind.startswith("linear")
         else _layernorm_linear(classifier))
    ref_logits, ref_pooled, ref_prob = _pcam_reference(x.numpy(), f, 3)
    np.testing.assert_allclose(prob.numpy(), ref_prob, rtol=1e-10)
    np.testing.assert_allclose(pooled.numpy(), ref_pooled, rtol=1e-10)
    np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-10)
    # each class pools with its own map: classes differ, and a flat probability map is the average
    assert not torch.allclose(pooled[:, 0], pooled[:, 1])
    with torch.no_grad():
        linear.weight.zero_()
        flat = pcam_pool(x, classifier)[1]
    assert torch.allclose(flat, x.mean(dim=(2, 3))[:, None, :].expand_as(flat))


def test_pcam_on_the_hand_made_map():
    """A classifier that fires on channel 0: the pooled feature leans to the map's bright corner."""
    classifier = torch.nn.Linear(2, 1)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[2.0, 0.0]]))
        classifier.bias.copy_(torch.tensor([-5.0]))
    with torch.no_grad():
        logits, pooled, prob = pcam_pool(MAP, classifier)
    s = 2.0 * MAP[0, 0] - 5.0
    p = torch.sigmoid(s)
    expected = (p / p.sum() * MAP[0]).sum(dim=(1, 2))
    assert torch.allclose(prob[0, 0], p) and torch.allclose(pooled[0, 0], expected)
    assert float(pooled[0, 0, 0]) > 2.5  # above the average 2.5: weighted to the high values
    assert float(logits[0, 0]) == pytest.approx(2.0 * float(expected[0]) - 5.0, rel=1e-6)


def test_channel_attention_formula():
    attention = ChannelAttention(2)
    with torch.no_grad():
        out = attention(MAP)
        hidden = torch.relu(attention.fc1(MAP.mean(dim=(2, 3))))
        gate = torch.sigmoid(attention.fc2(hidden))
    assert torch.allclose(out, MAP * gate[:, :, None, None])


def test_position_attention_starts_as_identity_and_learns():
    attention = PositionAttention(16)
    x = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(attention(x), x)  # gamma starts at 0 (DANet)
    with torch.no_grad():
        attention.gamma.fill_(1.0)
        q, k, v = attention.query(x).flatten(2), attention.key(x).flatten(2), attention.value(x).flatten(2)
        weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, hw, hw): row i attends over j
        expected = (v @ weights.transpose(1, 2)).view_as(x) + x
        assert torch.allclose(attention(x), expected, atol=1e-5)


@pytest.mark.parametrize("side", [1, 2, 3, 5, 8])
def test_pyramid_attention_keeps_the_map_shape_at_any_side(side):
    attention = PyramidAttention(8).eval()
    x = torch.randn(2, 8, side, side + 1)
    assert attention(x).shape == x.shape


def test_build_attention_names():
    assert build_attention("none", 8) is None
    assert [type(build_attention(n, 8)).__name__ for n in ATTENTIONS[1:]] == [
        "ChannelAttention", "PositionAttention", "PyramidAttention"]
    with pytest.raises(ValueError, match="unknown attention map 'cbam'; valid: none, channel, spatial, pyramid"):
        build_attention("cbam", 8)


def _signature(model, images):
    with torch.no_grad():
        out = model(images, None)
    return torch.cat([model.retrieval_embedding(out).flatten(), out.graph_logits.flatten()])


@pytest.mark.parametrize("overrides", [
    {"pooling": "max"}, {"pooling": "lse"}, {"pooling": "pcam"}, {"attention": "channel"},
    {"attention": "spatial"}, {"attention": "pyramid"}, {"pooling": "max", "attention": "channel"},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_pooling_and_attention_changes_the_global_classifier(overrides, tiny_batch):
    images = tiny_batch[0]
    torch.manual_seed(0)
    base = build_model("resnet50", **TINY).eval()
    torch.manual_seed(0)
    other = build_model("resnet50", **TINY, **overrides).eval()
    shared = {k: v for k, v in base.state_dict().items() if k in other.state_dict()}
    other.load_state_dict(shared, strict=False)
    with torch.no_grad():  # the spatial attention is the identity until trained: give it a weight
        for module in other.modules():
            if isinstance(module, PositionAttention):
                module.gamma.fill_(0.5)
    a, b = _signature(base, images), _signature(other, images)
    assert a.shape != b.shape or not torch.allclose(a, b, atol=1e-6)


def test_lse_gamma_changes_the_lse_model(tiny_batch):
    images = tiny_batch[0]
    torch.manual_seed(0)
    a = build_model("resnet50", **TINY, pooling="lse", lse_gamma=10.0).eval()
    b = build_model("resnet50", **TINY, pooling="lse", lse_gamma=0.5).eval()
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(_signature(a, images), _signature(b, images))


def test_the_model_pools_as_configured(tiny_batch):
    """extract pools the frozen map with the fixed pooling; PCAM and attention keep the map."""
    images = tiny_batch[0]
    for pooling in ("avg", "max", "lse"):
        model = build_model("resnet50", **TINY, pooling=pooling).eval()
        with torch.no_grad():
            feature_map = model.features.feature_map(images)
            assert torch.allclose(model.extract(images), pool(feature_map, pooling, 10.0))
    model = build_model("resnet50", **TINY, pooling="pcam").eval()
    model.features.set_feature_stats(torch.full((512,), 0.1), torch.full((512,), 2.0))
    with torch.no_grad():
        feature_map = model.extract(images)
        assert feature_map.shape == (4, 512, 2, 2)
        out = model.forward_features(feature_map)
        standardized = (feature_map - 0.1) / 2.0
        logits, pooled, prob = pcam_pool(standardized, model.head)
        assert torch.allclose(out.graph_logits, logits, atol=1e-6)
        assert torch.allclose(out.embedding, pooled.mean(dim=1), atol=1e-6)  # the embedding: mean of x_c
        assert torch.allclose(model.probability_maps(feature_map), prob)
        assert torch.allclose(model.classify_feature_map(feature_map), logits, atol=1e-6)


def test_pooling_options_belong_to_the_global_classifier():
    assert set(POOLINGS) == {"avg", "max", "lse", "pcam"}
    with pytest.raises(ConfigError, match="pooling and attention maps belong to the global classifier"):
        get_config("v6", pooling="max")
    with pytest.raises(ConfigError, match="belong to the global classifier"):
        get_config("anaxnet", attention="channel")
    with pytest.raises(ConfigError, match="projection would never be trained"):
        get_config("resnet50-projected", pooling="pcam")
    with pytest.raises(ValueError, match="unknown pooling 'mean'; valid: avg, max, lse, pcam"):
        get_config("resnet50", pooling="mean")
    assert get_config("resnet50-projected", pooling="lse", attention="pyramid").pools_feature_map
    from chextriev.model.config import ENCODER_NAMES

    with pytest.raises(ConfigError, match="the encoder's own global embedding"):
        get_config("resnet50", backbone=ENCODER_NAMES[0], pooling="pcam")


def test_train_cli_pooling_flags(tmp_path, capsys):
    from chextriev_cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--pooling", "mean"])
    assert "invalid choice: 'mean'" in capsys.readouterr().err
    code = main(["train", "--variant", "v6", "--pooling", "pcam", "--data", str(tmp_path), "--out",
                 str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [{"pooling": "pcam"}, {"pooling": "lse", "attention": "channel"}])
def test_a_pooled_classifier_trains_saves_and_explains(overrides, tiny_records, tmp_path):
    """Trained on cached feature maps (standardisation fitted over every location), saved, loaded
    and embedded through THE embedding function, and explained by Grad-CAM (and PCAM's own map)."""
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image
    from chextriev.localization import heatmap
    from chextriev.training.fit import train_records

    result = train_records(tiny_records, tmp_path / "run", variant="resnet50", preset="tiny", max_epochs=1,
                           cache_dir=tmp_path / "cache", progress=False, model_overrides=overrides)
    loaded = load_checkpoint(result.best)
    assert {k: getattr(loaded.config, k) for k in overrides} == overrides
    assert float(loaded.model.features.feature_scale.std()) > 0  # fitted on the maps, not the identity
    images = [load_image(r.source) for r in tiny_records[:3]]
    batch = embed_images(loaded, images)
    assert batch.embeddings.shape == (3, 512) and np.allclose(np.linalg.norm(batch.embeddings, axis=1), 1, atol=1e-5)
    assert batch.probabilities.shape == (3, 9) and batch.region_probabilities is None
    heat = heatmap(loaded, images[0], None, 0, method="gradcam")
    assert heat.shape == images[0].shape and 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    if overrides["pooling"] != "pcam":
        with pytest.raises(CamUnsupportedError, match="trained with --pooling pcam"):
            heatmap(loaded, images[0], None, 0, method="pcam")
        return
    # PCAM's heatmap is its own probability map of the class, upsampled and min-max scaled
    from chextriev.model.preprocess import prepare_image

    with torch.no_grad():
        maps = loaded.model.probability_maps(loaded.model.extract(prepare_image(images[0], 64)[None]))
    up = torch.nn.functional.interpolate(maps[:, 2:3], size=images[0].shape, mode="bilinear", align_corners=False)[0, 0]
    expected = ((up - up.min()) / (up.max() - up.min())).numpy()
    np.testing.assert_allclose(heatmap(loaded, images[0], None, 2, method="pcam"), expected, atol=1e-5)


@pytest.mark.parametrize("backbone", ["densenet121", "efficientnet_b0"])
def test_the_pooling_family_on_other_backbones(backbone, tiny_batch):
    """X_RAY's classifiers run on DenseNet and EfficientNet trunks too: each pooling and an
    attention map on their feature maps (1024 and 1280 channels)."""
    from chextriev.model.config import BACKBONE_FEATURE_DIMS

    images = tiny_batch[0][:2]
    for overrides in ({"pooling": "max"}, {"pooling": "lse"}, {"pooling": "pcam", "attention": "pyramid"}):
        model = build_model("resnet50", **{**TINY, "backbone": backbone}, **overrides).eval()
        with torch.no_grad():
            out = model(images, None)
            heat_input = model.features.feature_map(images)
        assert out.embedding.shape == (2, BACKBONE_FEATURE_DIMS[backbone]) and out.graph_logits.shape == (2, 9)
        assert model.classify_feature_map(heat_input).shape == (2, 9)
