import numpy as np
import pytest
import torch

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.detector import AnatomyDetector, best_box_per_class, image_to_tensor
from chextriev.anatomy.detector_nets import DetectorConfig
from chextriev.anatomy.iou import mean_iou
from chextriev.anatomy.provider import BoxProvider
from chextriev.anatomy.training import RegionBoxSet, jitter, train_detector
from chextriev.errors import ChextrievError, DataFormatError, UnknownNameError


def test_best_box_per_class_keeps_highest_score():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 4, 4], [0, 0, 5, 5]], np.float32)
    labels = np.array([1, 1, 3, 18, 0])  # label 0 (background) is ignored
    scores = np.array([0.4, 0.9, 0.2, 0.5, 0.99], np.float32)
    out, out_scores = best_box_per_class(boxes, labels, scores)
    assert out.shape == (18, 4) and out_scores.shape == (18,)
    assert np.array_equal(out[0], [0, 0, 2, 2]) and out_scores[0] == pytest.approx(0.9)
    assert np.array_equal(out[2], [0, 0, 3, 3])
    assert np.array_equal(out[17], [0, 0, 4, 4])
    missing = [r for r in range(18) if r not in (0, 2, 17)]
    assert np.isnan(out[missing]).all() and (out_scores[missing] == 0).all()
    empty, empty_scores = best_box_per_class(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert np.isnan(empty).all() and not empty_scores.any()


def test_config_rejects_unknown_backbone():
    with pytest.raises(UnknownNameError, match="resnet50"):
        DetectorConfig(backbone="vgg")


def test_image_to_tensor_shape():
    tensor = image_to_tensor(np.random.rand(50, 70).astype(np.float32), 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32


def test_predict_shapes_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    detector = AnatomyDetector(DetectorConfig(backbone="small", image_size=64))
    images = [np.random.rand(80, 100).astype(np.float32), np.random.rand(64, 64).astype(np.float32)]
    first = detector.predict(images)
    for (boxes, scores), image in zip(first, images):
        assert boxes.shape == (18, 4) and scores.shape == (18,)
        present = ~np.isnan(boxes).any(axis=1)
        assert (scores[~present] == 0).all()
        assert (boxes[present, 2] <= image.shape[1] + 1e-4).all() and (boxes[present, 3] <= image.shape[0] + 1e-4).all()
    path = detector.save(tmp_path / "det.pt", atlas=Atlas.default().to_dict())
    again = AnatomyDetector.load(path)
    assert again.config == detector.config
    assert Atlas.from_dict(again.extra["atlas"]).boxes.shape == (18, 4)
    second = again.predict(images)
    for (b1, s1), (b2, s2) in zip(first, second):
        np.testing.assert_allclose(b1, b2, atol=1e-4)
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(ChextrievError, match="train-detector"):
        AnatomyDetector.load(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(DataFormatError):
        AnatomyDetector.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataFormatError):
        AnatomyDetector.load(tmp_path / "junk.pt")


def test_region_box_set_drops_missing_and_scales(phantoms):
    images, boxes = phantoms(2, size=(80, 40))
    boxes[0][3] = np.nan
    boxes[1][:] = np.nan  # no region at all: image skipped
    data = RegionBoxSet.from_arrays(images, boxes, 64)
    assert len(data) == 1 and data.images.shape == (1, 64, 64) and data.images.dtype == np.uint8
    assert len(data.boxes[0]) == 17 and 4 not in data.labels[0]
    np.testing.assert_allclose(data.boxes[0][0], boxes[0][0] * [64 / 40, 64 / 80, 64 / 40, 64 / 80], rtol=1e-5)
    with pytest.raises(ChextrievError):
        RegionBoxSet.from_arrays(images[1:], boxes[1:], 64)


def test_jitter_moves_boxes_with_the_image():
    import random

    image = torch.zeros(1, 64, 64)
    image[0, 20:40, 10:30] = 1.0
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    out, moved = jitter(image, box, random.Random(3), strength=0.2)
    x1, y1, x2, y2 = moved[0].round().int().tolist()
    inside = out[0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert inside.numel() > 0 and inside.mean() > 0.9
    assert out[0].sum() == pytest.approx(inside.numel(), rel=0.6)


@pytest.mark.slow
def test_trained_detector_beats_atlas(phantom_records, tmp_path):
    """Small backbone, 128 px, 48 phantoms, 8 epochs (~30-40 s on 2 CPU cores)."""
    train, train_loader = phantom_records(48, seed=0)
    valid, valid_loader = phantom_records(16, seed=1)
    path = train_detector(train, tmp_path / "det.pt", epochs=8, image_size=128, backbone="small",
                          batch_size=4, loader=train_loader)
    detector = AnatomyDetector.load(path)
    atlas = Atlas.from_dict(detector.extra["atlas"])
    assert len(detector.extra["loss_history"]) == 8
    assert detector.extra["loss_history"][-1] < detector.extra["loss_history"][0]
    images = [valid_loader(r.source) for r in valid]
    truths = [r.boxes for r in valid]
    atlas_iou = mean_iou([atlas.boxes_for(*image.shape) for image in images], truths)
    detector_iou = mean_iou([boxes for boxes, _ in detector.predict(images)], truths)
    provider_iou = mean_iou([b for b, _ in BoxProvider(atlas, detector).boxes_for(images)], truths)
    assert detector_iou > atlas_iou + 0.1, (detector_iou, atlas_iou)
    assert provider_iou > atlas_iou + 0.1, (provider_iou, atlas_iou)
