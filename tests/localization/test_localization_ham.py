"""HAM (hierarchical attention mining): the network's parts, each loss term, masked labels,
checkpoints, heatmaps, training on images with a drawn lesion, and its use by the metrics."""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.localization.ham import (
    ForegroundAttention,
    HAMCheckpointError,
    HAMConfig,
    HAMNet,
    HAMOutput,
    box_masks,
    ham_heatmap,
    ham_losses,
    load_ham,
    lse_pool,
    minmax,
    save_ham,
    soft_mask,
)
from chextriev.records import Record

TINY = {"image_size": 64, "head_width": 16, "dropout": 0.0}
CLASSES = ("blob", "ring")


def tiny_net(**overrides) -> HAMNet:
    torch.manual_seed(0)
    return HAMNet(HAMConfig(class_names=CLASSES, **{**TINY, **overrides})).eval()


def test_shapes_and_feature_stride():
    net = tiny_net()
    out = net(torch.rand(3, 1, 64, 64))
    assert out.anomaly_logit.shape == (3,) and out.class_logits.shape == (3, 2)
    assert out.features.shape == (3, 16, 2, 2) and out.class_cams.shape == (3, 2, 2, 2)
    assert out.anomaly_cam.shape == (3, 1, 2, 2) and (out.class_cams >= 0).all()
    fine = tiny_net(feature_stride=16)(torch.rand(1, 1, 64, 64))
    assert fine.features.shape[-2:] == (4, 4)
    assert not any(p.requires_grad for p in tiny_net().trunk.parameters())  # frozen by default
    assert all(p.requires_grad for p in tiny_net(train_backbone=True).trunk.parameters())


def test_config_errors_list_valid_values():
    with pytest.raises(UnknownNameError, match="attention, class"):
        HAMConfig(combine="max")
    with pytest.raises(UnknownNameError, match="32, 16"):
        HAMConfig(feature_stride=8)
    with pytest.raises(UnknownNameError, match="resnet50, resnet18, densenet121, efficientnet_b0"):
        HAMConfig(backbone="vgg")


def test_foreground_attention_starts_as_identity_and_trains():
    torch.manual_seed(0)
    block = ForegroundAttention(8, reduction=2)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)  # gamma = 0
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x).pow(2).sum().backward()
    optimizer.step()
    assert block.gamma.item() != 0 and not torch.equal(block(x), x)


def test_lse_pooling_soft_mask_and_minmax():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    assert lse_pool(x, 1e-4).item() == pytest.approx(2.0, abs=1e-3)  # r -> 0: mean
    assert lse_pool(x, 100.0).item() == pytest.approx(5.0 - math.log(4) / 100, abs=1e-3)  # r -> inf: max
    assert 2.0 < lse_pool(x, 6.0).item() < 5.0
    assert torch.allclose(minmax(x), x / 5)
    assert torch.equal(minmax(torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))
    mask = soft_mask(torch.tensor([0.3, 0.5]), 100.0, 0.4)
    assert mask[0] < 0.001 and mask[1] > 0.999


def _output(class_cams, anomaly_cam, net):
    b, c = class_cams.shape[:2]
    features = torch.rand(b, net.config.head_width, *class_cams.shape[-2:], requires_grad=True)
    return HAMOutput(torch.zeros(b, requires_grad=True), torch.zeros(b, c, requires_grad=True), features,
                     anomaly_cam, class_cams)


def test_bound_and_union_terms():
    net = tiny_net(loss_remainder=0.0)
    inside = torch.zeros(1, 2, 4, 4)
    inside[0, 0, 1:3, 1:3] = 2.0
    anomaly = torch.zeros(1, 1, 4, 4)
    anomaly[0, 0, 1:3, 1:3] = 2.0
    labels = torch.tensor([[1.0, 0.0]])
    fit = ham_losses(net, _output(inside, anomaly, net), labels)
    assert fit["bound"].item() == pytest.approx(0.0, abs=1e-4) and fit["union"].item() == pytest.approx(0.0, abs=1e-4)
    outside = torch.zeros(1, 2, 4, 4)
    outside[0, 0, 0, 0] = 2.0
    off = ham_losses(net, _output(outside, anomaly, net), labels)
    assert off["bound"].item() == pytest.approx(1.0, abs=1e-4)  # the class map is all outside
    assert off["union"].item() == pytest.approx(1.0, abs=1e-4)  # the abnormality map is all uncovered
    normal = ham_losses(net, _output(outside, anomaly, net), torch.zeros(1, 2))
    assert normal["bound"].item() == 0 and normal["union"].item() == 0  # no positive: no term


def test_box_term_rewards_maps_on_the_box():
    net = tiny_net(loss_remainder=0.0)
    masks, has = box_masks([[(0, (32, 32, 64, 64))]], 2, 64)
    assert has.tolist() == [[True, False]] and masks[0, 0].sum() == 32 * 32
    on = torch.zeros(1, 2, 2, 2)
    on[0, 0, 1, 1] = 1.0
    off = torch.zeros(1, 2, 2, 2)
    off[0, 0, 0, 0] = 1.0
    anomaly = torch.ones(1, 1, 2, 2)
    labels = torch.tensor([[1.0, 0.0]])
    good = ham_losses(net, _output(on, anomaly, net), labels, masks, has)["box"]
    bad = ham_losses(net, _output(off, anomaly, net), labels, masks, has)["box"]
    assert good.item() < 0.35 and bad.item() > 0.9
    assert ham_losses(net, _output(on, anomaly, net), labels)["box"].item() == 0  # no boxes, no term


def test_remainder_term_and_total_weights():
    net = tiny_net(loss_remainder=1.0)
    x = torch.rand(2, 1, 64, 64)
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    terms = ham_losses(net, net(x), labels)
    assert 0 < terms["remainder"].item() < 1
    cfg = net.config
    expected = (cfg.loss_anomaly * terms["anomaly"] + cfg.loss_cls * terms["cls"] + cfg.loss_remainder
                * terms["remainder"] + cfg.loss_bound * terms["bound"] + cfg.loss_union * terms["union"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["total"].backward()
    assert net.foreground.inward[0].weight.grad is not None
    assert ham_losses(net, net(x), torch.zeros(2, 2))["remainder"].item() == 0  # no positive


def test_masked_labels_are_left_out():
    net = tiny_net(loss_remainder=1.0)
    x = torch.rand(2, 1, 64, 64)
    output = net(x)
    masked = ham_losses(net, output, torch.tensor([[1.0, math.nan], [0.0, 0.0]]))
    zero = ham_losses(net, output, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    one = ham_losses(net, output, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert math.isfinite(masked["total"].item())
    assert masked["cls"].item() != zero["cls"].item() and masked["cls"].item() != one["cls"].item()
    assert masked["remainder"].item() == pytest.approx(zero["remainder"].item())  # not a positive
    unknown = ham_losses(net, output, torch.tensor([[math.nan, math.nan], [0.0, 0.0]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.anomaly_logit[1:].detach(), torch.zeros(1))
    assert unknown["anomaly"].item() == pytest.approx(expected.item())  # the all-masked image is left out


def test_checkpoint_round_trip_and_errors(tmp_path):
    net = tiny_net()
    path = save_ham(net, tmp_path / "ham.pt", {"epoch": 3})
    loaded = load_ham(path)
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(loaded.model(x).class_logits, net(x).class_logits)
    assert loaded.class_names == CLASSES and loaded.training["epoch"] == 3 and len(loaded.checkpoint_id) == 16
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(HAMCheckpointError, match="not a HAM checkpoint"):
        load_ham(tmp_path / "other.ckpt")
    with pytest.raises(HAMCheckpointError, match="does not exist"):
        load_ham(tmp_path / "none.pt")


def test_heatmap_shape_range_and_errors():
    net = tiny_net()
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    for combine in ("attention", "class"):
        heat = ham_heatmap(net, image, "ring", combine=combine)
        assert heat.shape == (50, 70) and heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
        assert heat.min() == 0.0 and heat.max() in (0.0, 1.0)  # min-max normalised (see test_localization_cam)
    assert np.array_equal(ham_heatmap(net, image, 1, combine="class"), ham_heatmap(net, image, "ring", combine="class"))
    with pytest.raises(UnknownNameError, match="blob, ring"):
        ham_heatmap(net, image, "nodule")
    with pytest.raises(UnknownNameError, match="attention, class"):
        ham_heatmap(net, image, 0, combine="sum")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def blob_records(n: int, size: int = 128, seed: int = 0) -> list[Record]:
    """Noise images; half carry a bright blob (class "blob", its box in meta["lesion_boxes"]).
    Patients are single images; every 5th image is validation, every 5th+1 test."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    records = []
    for i in range(n):
        image = rng.normal(0.3, 0.05, (size, size))
        positive = i % 2 == 0
        boxes = []
        if positive:
            cx, cy = rng.uniform(24, size - 24, 2)
            image = image + 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 7.0**2))
            boxes = [{"finding": "blob", "box": (cx - 14, cy - 14, cx + 14, cy + 14)}]
        split = {0: "validate", 1: "test"}.get(i % 5, "train")
        records.append(Record(source=_png(image), image_id=f"img{i}", patient_id=f"p{i}", class_names=CLASSES,
                              labels=np.array([float(positive), 0.0], np.float32), image_size=(size, size),
                              split=split, meta={"lesion_boxes": boxes}))
    return records


@pytest.fixture(scope="module")
def trained_blob_ham(tmp_path_factory):
    from chextriev.localization.ham_training import train_ham

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ham")
        result = train_ham(blob_records(100), out, preset="tiny", epochs=12, batch_size=16, lr=3e-3,
                           image_size=128, feature_stride=16, head_width=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result


@pytest.mark.slow  # 12 epochs on 60 cached 128 px trunk maps (seconds)
def test_training_writes_checkpoints_and_learns(trained_blob_ham):
    result = trained_blob_ham
    assert result.best.is_file() and result.last.is_file() and (result.best.parent / "history.csv").is_file()
    assert result.splits == {"train": 60, "validate": 20, "test": 20} and result.n_box_images == 30
    first, last = result.history[0], result.history[-1]
    assert last["train_cls"] < first["train_cls"]
    loaded = load_ham(result.best)
    assert loaded.training["epoch"] == result.best_epoch and loaded.training["n_box_images"] == 30


@pytest.mark.slow
def test_heatmap_peaks_inside_the_lesion_and_metrics_score_it(trained_blob_ham):
    from metrics.localization_eval import evaluate_localization, lesion_box_truth

    loaded = load_ham(trained_blob_ham.best)
    test = [r for r in blob_records(100) if r.split == "test" and r.meta["lesion_boxes"]]
    from chextriev.io.images import load_image

    hits = 0
    for record in test:
        heat = ham_heatmap(loaded, load_image(record.source), "blob")
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        x1, y1, x2, y2 = record.meta["lesion_boxes"][0]["box"]
        hits += x1 <= x <= x2 and y1 <= y <= y2
    area_share = (28 * 28) / (128 * 128)
    assert hits / len(test) > max(0.6, 5 * area_share)  # chance: about 0.05
    result = evaluate_localization(loaded, test, lesion_box_truth, method="ham", max_images=None)
    assert result["method"] == "ham (attention)" and result["boxes"]["n_cases"] == len(test)
    assert result["boxes"]["iobb"][0.1] > 0.5


@pytest.mark.slow
def test_training_without_a_feature_cache_and_with_a_trained_trunk(tmp_path):
    """Images read per batch (max_cache_bytes=0, and a fine-tuned trunk): same outputs written."""
    from chextriev.localization.ham_training import train_ham

    records = blob_records(20, size=64)
    frozen = train_ham(records, tmp_path / "a", preset="tiny", epochs=1, max_cache_bytes=0, progress=False)
    tuned = train_ham(records, tmp_path / "b", preset="tiny", epochs=1, train_backbone=True, progress=False)
    assert frozen.best.is_file() and tuned.best.is_file()
    before = tiny_net().trunk.state_dict()
    after = load_ham(tuned.best).model.trunk.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].dtype.is_floating_point)
    assert all(torch.equal(before[k], v) for k, v in load_ham(frozen.best).model.trunk.state_dict().items())


def test_training_needs_both_splits():
    from chextriev.localization.ham_training import train_ham

    records = [r for r in blob_records(10) if r.split == "train"]
    for r in records:
        r.split = "train"
    with pytest.raises(DataFormatError, match="no labelled record"):
        train_ham([Record(source=b"", image_id="x")], "/nonexistent", preset="tiny")
    with pytest.raises(UnknownNameError, match="tiny, synthetic-small, published"):
        train_ham(records, "/nonexistent", preset="huge")


def test_cli_registers_and_knows_the_presets():
    from chextriev.localization.cli import PRESET_NAMES, register
    from chextriev.localization.ham_training import HAM_PRESETS

    assert PRESET_NAMES == tuple(HAM_PRESETS)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-ham", "--data", "d", "--out", "o", "--box-fraction", "0.5"])
    assert args.box_fraction == 0.5 and args.preset == "synthetic-small"


def test_metrics_cli_knows_the_localization_methods(tmp_path):
    from metrics.cli import LOCALIZATION_METHODS as CLI_METHODS
    from metrics.localization_eval import LOCALIZATION_METHODS, evaluate_localization

    assert CLI_METHODS == LOCALIZATION_METHODS
    with pytest.raises(UnknownNameError, match="cam, gradcam, gradcampp, pcam, ham"):
        evaluate_localization(None, [], lambda r: [], method="hirescam")


@pytest.mark.slow  # a 6-patient archive, a tiny retrieval checkpoint, one HAM epoch, one evaluation
def test_train_ham_and_evaluate_with_ham_end_to_end(tmp_path):
    import json

    from chextriev.training.quick import train_tiny_checkpoint
    from chextriev_cli.main import main

    archive = tmp_path / "archive"
    assert main(["synth", "--out", str(archive), "--patients", "8", "--seed", "0", "--size", "128"]) == 0
    ckpt = train_tiny_checkpoint(archive, tmp_path / "run", "v1")
    assert main(["train-ham", "--data", str(archive), "--out", str(tmp_path / "ham"), "--preset", "tiny",
                 "--epochs", "1", "--no-progress"]) == 0
    loaded = load_ham(tmp_path / "ham" / "best.pt")
    assert loaded.training["n_box_images"] > 0  # the archive's drawn lesions trained the maps
    out = tmp_path / "eval"
    base = ["evaluate", "--checkpoint", str(ckpt), "--data", str(archive), "--split", "all", "--k", "3",
            "--loc-max-images", "4", "--no-figures", "--cam-method", "ham"]
    assert main(base + ["--out", str(out)]) == 2  # no --ham-checkpoint: a clear error, exit status 2
    assert main(base + ["--out", str(out), "--ham-checkpoint", str(tmp_path / "ham" / "best.pt")]) == 0
    block = json.loads((out / "metrics.json").read_text())["localization"]["synthetic lesions"]
    assert block["method"] == "ham (attention)" and block["ham_checkpoint_id"] == loaded.checkpoint_id
    assert block["boxes"]["n_cases"] >= 1 and block["pixels"]["n_cases"] >= 1
    assert "ham (attention)" in (out / "report.md").read_text()
