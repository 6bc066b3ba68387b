"""Backbones chest X-ray users have weights for: DenseNet121, EfficientNet-B0..B4 beside the
ResNets; torchvision and torchxrayvision state dicts from local files; checkpoints that carry
their backbone; feature-cache keys that tell backbones apart.

Nothing is downloaded: the weights files are written here from the networks' own classes
(torchvision's, and torchxrayvision's ``xrv.models.DenseNet(weights=None)`` from the PyPI
package, an extra of the ``dev`` install). Outside CI a missing torchxrayvision skips its tests
with the reason; ``CHEXTRIEV_REQUIRE_XRV=1`` (set by ``.ci/run``) fails them instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from chextriev.errors import UnknownNameError
from chextriev.model.backbone import (
    BackboneWeightsError,
    build_trunk,
    check_backbone,
    full_network,
    normalize,
    trunk_channels,
    weights_id,
)
from chextriev.model.build import build_model
from chextriev.model.config import (
    BACKBONE_FEATURE_DIMS,
    BACKBONES,
    CNN_BACKBONES,
    TINY,
    ModelConfig,
    get_config,
)
from chextriev.model.weights import expected_shapes, read_state_dict


def torchxrayvision():
    """The torchxrayvision module, or a skip (a failure under ``CHEXTRIEV_REQUIRE_XRV=1``)."""
    try:
        import torchxrayvision as xrv
    except ImportError as error:
        if os.environ.get("CHEXTRIEV_REQUIRE_XRV") == "1":
            pytest.fail(f"torchxrayvision required (CHEXTRIEV_REQUIRE_XRV=1) but not importable: {error}")
        pytest.skip(f"torchxrayvision not installed ({error}); pip install -e .[xrv]")
    return xrv


def _seeded_network(name: str, weights_format: str = "torchvision", seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    net = full_network(name, weights_format).eval()
    # non-trivial batch-norm statistics, so that a wrongly mapped buffer shows
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def _pooled_reference(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own forward with the classifier removed: the pooled feature ``(B, F)``."""
    if hasattr(net, "fc"):
        net.fc = nn.Identity()
    else:
        net.classifier = nn.Identity()
    with torch.no_grad():
        return net(x)


# ------------------------------------------------------------------------------- architecture
def test_feature_dims_follow_the_backbone():
    assert set(CNN_BACKBONES) >= {"resnet18", "resnet50", "densenet121", *(f"efficientnet_b{i}" for i in range(5))}
    assert set(BACKBONES) == set(CNN_BACKBONES) | {"rad-dino", "biomedclip", "chexzero", "medsiglip", "dinov2",
                                                   "siglip", "open-clip", "openai-clip"}
    for name in CNN_BACKBONES:
        assert trunk_channels(name, 32) == BACKBONE_FEATURE_DIMS[name] == ModelConfig(backbone=name).feature_dim
    assert BACKBONE_FEATURE_DIMS["densenet121"] == 1024 and BACKBONE_FEATURE_DIMS["efficientnet_b0"] == 1280
    # the stride-16 map (HAM's finer option) is one stage less
    assert trunk_channels("resnet50", 16) == 1024 and trunk_channels("densenet121", 16) == 1024
    assert trunk_channels("efficientnet_b0", 16) == 112


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="densenet121.*efficientnet_b4"):
        ModelConfig(backbone="vgg16")
    with pytest.raises(UnknownNameError, match="torchvision, xrv"):
        ModelConfig(backbone_weights_format="timm")
    with pytest.raises(UnknownNameError, match="valid: densenet121"):
        ModelConfig(backbone="resnet50", backbone_weights_format="xrv", image_size=224)
    with pytest.raises(UnknownNameError, match="efficientnet_b0"):
        check_backbone("efficientnet_b9")
    with pytest.raises(ValueError, match="224 px"):
        ModelConfig(backbone="densenet121", backbone_weights_format="xrv", image_size=512)
    # crop mode: the crops are the model input
    with pytest.raises(ValueError, match="crop_size=224"):
        ModelConfig(backbone="densenet121", backbone_weights_format="xrv", feature_mode="crop", crop_size=128)
    ModelConfig(backbone="densenet121", backbone_weights_format="xrv", feature_mode="crop", image_size=1024)


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
@pytest.mark.parametrize("variant", ["v6", "resnet50", "anaxnet"])
def test_region_global_and_anaxnet_models_run_on_each_backbone(name, variant, tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    model = build_model(variant, **{**TINY, "backbone": name})
    trunk = model.regions.trunk if hasattr(model, "regions") else model.features.trunk
    with torch.no_grad():
        assert trunk(normalize(images[:1])).shape[1] == BACKBONE_FEATURE_DIMS[name]
    out = model(images, boxes)
    assert torch.isfinite(model.loss(out, labels, region_labels))
    assert out.graph_logits.shape == (4, 9)
    if variant == "resnet50":  # the published global baseline: the pooled frozen feature itself
        assert out.embedding.shape == (4, BACKBONE_FEATURE_DIMS[name])


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
def test_cam_and_ham_use_the_backbone_map(name, tiny_batch):
    from chextriev.localization import heatmap
    from chextriev.localization.adapters import cam_pipeline
    from chextriev.localization.ham import HAMConfig, HAMNet

    images, boxes, _, _ = tiny_batch
    model = build_model("v6", **{**TINY, "backbone": name}).eval()
    pipeline = cam_pipeline(model, boxes[:1])
    assert pipeline.features(images[:1]).shape == (1, BACKBONE_FEATURE_DIMS[name], 2, 2)
    image = images[0, 0].numpy()
    for method in ("gradcam", "gradcampp", "cam"):
        heat = heatmap(model, image, boxes[0].numpy(), 0, method=method)
        assert heat.shape == image.shape and np.isfinite(heat).all()
    for stride in (32, 16):
        ham = HAMNet(HAMConfig(backbone=name, feature_stride=stride, image_size=64, head_width=32)).eval()
        with torch.no_grad():
            trunk_map = ham.trunk_features(images[:2])
        assert trunk_map.shape == (2, trunk_channels(name, stride), 64 // stride, 64 // stride)
        assert ham(images[:2]).class_logits.shape == (2, 9)


# -------------------------------------------------------------------- torchvision weights files
@pytest.mark.parametrize("name", CNN_BACKBONES)
def test_torchvision_state_dict_round_trip(name, tmp_path):
    """The ``.pth`` layout torchvision downloads loads into the trunk; the pooled trunk feature
    equals torchvision's own network with its classifier removed."""
    net = _seeded_network(name)
    path = tmp_path / f"{name}.pth"
    state = net.state_dict()
    if name == "densenet121":  # torchvision's densenet121 file still has the pre-0.4 key names
        state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)", r"\1.\2", k): v for k, v in state.items()}
        assert any(".norm.1." in k for k in state)
    torch.save(state, path)
    trunk = build_trunk(name, str(path)).eval()
    x = normalize(torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        ours = trunk(x).mean(dim=(2, 3))
    reference = _pooled_reference(net, x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


def test_wrong_files_name_the_expected_keys(tmp_path):
    small = tmp_path / "resnet18.pth"
    torch.save(_seeded_network("resnet18").state_dict(), small)
    with pytest.raises(BackboneWeightsError, match=r"does not fit a resnet50 .*conv1\.weight \(64, 3, 7, 7\).*"
                                                   r"fits backbone resnet18"):
        build_trunk("resnet50", str(small))
    with pytest.raises(BackboneWeightsError, match="fits backbone resnet18"):
        build_trunk("densenet121", str(small))
    one_channel = tmp_path / "xrv.pt"
    torch.save({k: v for k, v in full_network("densenet121", "xrv").state_dict().items()}, one_channel)
    with pytest.raises(BackboneWeightsError, match=r"wrong shapes \[features\.conv0\.weight: file \(64, 1, 7, 7\) "
                                                   r"vs \(64, 3, 7, 7\)\].*weights format xrv"):
        build_trunk("densenet121", str(one_channel))
    assert build_trunk("densenet121", str(one_channel), weights_format="xrv")[0].weight.shape == (64, 1, 7, 7)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        build_trunk("resnet18", str(garbage))
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_trunk("resnet18", str(tmp_path / "absent.pth"))
    pickled = tmp_path / "pickled-model.pt"  # how torchxrayvision publishes its weights
    torch.save(torchvision.models.resnet18(), pickled)
    with pytest.raises(BackboneWeightsError, match=r"not a plain state dict \(it pickles torchvision.models.resnet.ResNet\).*state_dict\(\)"):
        build_trunk("resnet18", str(pickled))


def test_wrapped_and_data_parallel_state_dicts_load(tmp_path):
    net = _seeded_network("resnet18")
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    state = read_state_dict(path)
    assert set(state) == set(net.state_dict())
    # files from before torch 0.4.1 have no batch-norm step counters (torchvision's resnet50 file)
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    trunk = build_trunk("resnet18", str(path))
    torch.testing.assert_close(trunk[0].weight, net.conv1.weight)
    assert int(trunk[1].num_batches_tracked) == 0


# ---------------------------------------------------------------------- torchxrayvision weights
@pytest.fixture(scope="module")
def xrv_weights(tmp_path_factory):
    """(torchxrayvision's own DenseNet, its state dict saved as a file) - no weights downloaded."""
    xrv = torchxrayvision()
    torch.manual_seed(3)
    reference = xrv.models.DenseNet(weights=None).eval()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    reference.op_threshs = torch.rand(18)  # their released files carry operating points
    path = tmp_path_factory.mktemp("xrv") / "densenet121-res224-all.state.pt"
    torch.save(reference.state_dict(), path)
    assert {"features.conv0.weight", "classifier.weight", "op_threshs"} <= set(torch.load(path))
    return xrv, reference, path


def _xrv_image(directory, size: int = 224):
    """An 8-bit grey PNG (a smooth gradient with a bright disc)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = (40 + 150 * x / size + 60 * ((x - size * 0.6) ** 2 + (y - size * 0.4) ** 2 < (size / 6) ** 2))
    pixels = np.clip(pixels + np.random.default_rng(0).integers(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    path = directory / "image.png"
    Image.fromarray(pixels, mode="L").save(path)
    return path, pixels


def test_xrv_normalisation_matches_torchxrayvision(xrv_weights, tmp_path):
    from chextriev.io.images import load_image

    xrv, _, _ = xrv_weights
    path, pixels = _xrv_image(tmp_path)
    theirs = xrv.utils.normalize(pixels, 255)
    ours = normalize(torch.from_numpy(load_image(path))[None, None], "xrv")[0, 0].numpy()
    assert ours.min() >= -1024 and ours.max() <= 1024
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)  # float32 rounding of p / 255 only


def test_xrv_state_dict_gives_torchxrayvision_features(xrv_weights, tmp_path):
    """Their model, their normalisation, their 224 px input vs the project's whole input path
    (PNG reader, prepare_input, the backbone's normalisation, the trunk)."""
    from chextriev.io.images import load_image

    xrv, reference, weights = xrv_weights
    path, pixels = _xrv_image(tmp_path)
    x = torch.from_numpy(xrv.utils.normalize(pixels, 255))[None, None]
    with torch.no_grad():
        their_map = torch.relu(reference.features(x))
        their_pooled = reference.features2(x)
    model = build_model("resnet50", backbone="densenet121", backbone_weights=str(weights),
                        backbone_weights_format="xrv", image_size=224).eval()
    image = load_image(path)
    model_input, _ = model.prepare_input(image, np.full((18, 4), np.nan, dtype=np.float32))
    with torch.no_grad():
        our_map = model.features.feature_map(model_input[None])
        our_pooled = model.extract(model_input[None])
    scale = float(their_map.abs().max())
    torch.testing.assert_close(our_map, their_map, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(our_pooled, their_pooled, rtol=1e-4, atol=1e-5 * scale)
    # the region models read the same map (RoIAlign of it)
    region = build_model("v0-image", backbone="densenet121", backbone_weights=str(weights),
                         backbone_weights_format="xrv", image_size=224, width=64, heads=2, head_dim=16).eval()
    with torch.no_grad():
        torch.testing.assert_close(region.regions.feature_map(model_input[None]), their_map,
                                   rtol=1e-4, atol=1e-5 * scale)


def test_a_pickled_torchxrayvision_file_is_refused_with_a_conversion_that_works(xrv_weights, tmp_path):
    """torchxrayvision releases its weights as whole pickled models (``torch.save(model)``): the
    loader refuses to unpickle one and prints a command; that command, run as printed, gives a
    file that loads as their network."""
    _, reference, _ = xrv_weights
    released = tmp_path / "densenet121-res224-all.pt"
    torch.save(reference, released)
    with pytest.raises(BackboneWeightsError, match=r"it pickles torchxrayvision\.models\.DenseNet") as raised:
        build_trunk("densenet121", str(released), weights_format="xrv")
    command = re.search(r'python -c "(.*?)" and pass (\S+)$', str(raised.value))
    assert command is not None, str(raised.value)
    subprocess.run([sys.executable, "-c", command.group(1)], check=True, timeout=120, cwd=tmp_path)
    trunk = build_trunk("densenet121", command.group(2), weights_format="xrv").eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), torch.relu(reference.features(x)), rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------- checkpoints, cache
def test_cache_key_includes_backbone_and_weights():
    from chextriev.training.feature_cache import config_signature

    configs = [get_config("v6", **TINY), get_config("v6", **{**TINY, "backbone": "densenet121"}),
               get_config("v6", **{**TINY, "backbone": "efficientnet_b0"}),
               get_config("v6", **{**TINY, "backbone": "densenet121", "backbone_weights_format": "xrv",
                                   "image_size": 224}),
               get_config("v6", **{**TINY, "backbone": "densenet121", "image_size": 224})]
    signatures = [config_signature(c) for c in configs]
    assert len(set(signatures)) == len(signatures)
    # torchvision-format keys are those of before the formats existed: caches stay valid
    assert weights_id(None, 0) == "random-seed0" and weights_id(None, 0, "xrv") == "xrv-random-seed0"


def _train(tiny_records, out, backbone_weights, **overrides):
    from chextriev.training.fit import train_records

    return train_records(tiny_records, out, variant="v6", preset="tiny", max_epochs=1, progress=False,
                         cache_dir=out / "feature-cache", backbone_weights=backbone_weights,
                         model_overrides=overrides)


@pytest.mark.parametrize("name", ["densenet121", "efficientnet_b0"])
def test_tiny_training_writes_a_checkpoint_that_rebuilds_its_backbone(name, tiny_records, tmp_path):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image

    weights = tmp_path / f"{name}.pth"
    torch.save(_seeded_network(name).state_dict(), weights)
    result = _train(tiny_records, tmp_path / "run", str(weights), backbone=name)
    trunk_from_file = build_trunk(name, str(weights))
    weights.unlink()  # the checkpoint alone rebuilds the backbone
    loaded = load_checkpoint(result.best)
    assert loaded.config.backbone == name and loaded.config.backbone_weights is None
    first_conv = next(m for m in loaded.model.regions.trunk.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 3
    for key, value in trunk_from_file.state_dict().items():
        torch.testing.assert_close(loaded.model.regions.trunk.state_dict()[key], value)
    images = [load_image(r.source) for r in tiny_records[:3]]
    batch = embed_images(loaded, images, [r.boxes for r in tiny_records[:3]])
    assert batch.embeddings.shape == (3, 64) and np.isfinite(batch.embeddings).all()


def test_xrv_checkpoint_keeps_their_input(xrv_weights, tiny_records, tmp_path):
    """Trained with xrv weights (the tiny preset's 64 px gives way to their 224), the checkpoint
    alone gives torchxrayvision's features again."""
    from chextriev.checkpoint import load_checkpoint

    _, reference, weights = xrv_weights
    result = _train(tiny_records[:12], tmp_path / "run", str(weights), backbone="densenet121",
                    backbone_weights_format="xrv")
    loaded = load_checkpoint(result.best)
    assert loaded.config.backbone_weights_format == "xrv" and loaded.config.image_size == 224
    x = torch.rand(1, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded.model.regions.feature_map(x)
        theirs = torch.relu(reference.features((2 * x - 1) * 1024))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))


def test_train_cli_rejects_an_unknown_backbone(tmp_path, caplog):
    from chextriev_cli.main import main

    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--backbone", "vgg16"])
    assert code == 2 and "unknown backbone 'vgg16'; valid: resnet50, resnet18, densenet121" in caplog.text
    caplog.clear()
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--backbone", "resnet18",
                 "--backbone-weights-format", "xrv"])
    assert code == 2 and "valid: densenet121" in caplog.text
    assert not (tmp_path / "o").exists()  # refused before any data is read


def test_expected_shapes_are_the_trunk_without_classifier():
    shapes = expected_shapes("densenet121", "xrv")
    assert shapes["features.conv0.weight"] == (64, 1, 7, 7)
    assert not any(k.startswith("classifier.") for k in shapes)


def test_ham_checkpoint_rebuilds_its_backbone_without_the_weights_file(tmp_path):
    from chextriev.localization.ham import HAMConfig, HAMNet, load_ham, save_ham

    weights = tmp_path / "efficientnet_b0.pth"
    torch.save(_seeded_network("efficientnet_b0").state_dict(), weights)
    ham = HAMNet(HAMConfig(backbone="efficientnet_b0", backbone_weights=str(weights), image_size=64, head_width=32))
    path = save_ham(ham, tmp_path / "ham.pt")
    weights.unlink()
    loaded = load_ham(path)
    assert loaded.config.backbone == "efficientnet_b0"
    for key, value in ham.trunk.state_dict().items():
        torch.testing.assert_close(loaded.model.trunk.state_dict()[key], value)
