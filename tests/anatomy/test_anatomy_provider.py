import numpy as np
import pytest

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.iou import mean_iou, per_region_iou, region_box_iou
from chextriev.anatomy.provider import BoxProvider, merge_boxes


class FakeDetector:
    """Returns fixed boxes with the given scores; records the batch sizes it saw."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)
        self.calls = []

    def predict(self, images):
        self.calls.append(len(images))
        out = []
        for image in images:
            h, w = image.shape
            boxes = np.tile(np.array([[1, 2, w - 1, h - 2]], dtype=np.float32), (18, 1))
            boxes[self.scores <= 0] = np.nan
            out.append((boxes, self.scores.copy()))
        return out


def test_atlas_only():
    provider = BoxProvider(Atlas.default())
    (boxes, source), = provider.boxes_for([np.zeros((40, 80), np.float32)])
    assert source == "atlas"
    assert np.allclose(boxes, Atlas.default().boxes_for(40, 80))


def test_detector_all_confident():
    detector = FakeDetector(np.full(18, 0.9))
    provider = BoxProvider(Atlas.default(), detector, min_score=0.3, batch_size=2)
    images = [np.zeros((30, 50), np.float32)] * 5
    results = provider.boxes_for(images)
    assert detector.calls == [2, 2, 1]
    assert all(source == "detector" for _, source in results)
    assert np.allclose(results[0][0][0], [1, 2, 49, 28])


def test_detector_partial_and_none():
    scores = np.full(18, 0.9)
    scores[3] = 0.1  # below min_score -> atlas
    scores[5] = 0.0  # not found (NaN box) -> atlas
    provider = BoxProvider(Atlas.default(), FakeDetector(scores), min_score=0.3)
    (boxes, source), = provider.boxes_for([np.zeros((60, 60), np.float32)])
    atlas = Atlas.default().boxes_for(60, 60)
    assert source == "detector+atlas"
    assert np.allclose(boxes[3], atlas[3]) and np.allclose(boxes[5], atlas[5])
    assert np.allclose(boxes[0], [1, 2, 59, 58])
    assert np.isfinite(boxes).all()
    provider = BoxProvider(Atlas.default(), FakeDetector(np.full(18, 0.2)), min_score=0.3)
    (_, source), = provider.boxes_for([np.zeros((60, 60), np.float32)])
    assert source == "atlas"


def test_merge_rejects_degenerate_boxes():
    detected = np.tile(np.array([[5, 5, 5, 9]], np.float32), (18, 1))  # zero width
    merged, source = merge_boxes(detected, np.ones(18), np.zeros((18, 4)), 0.3)
    assert source == "atlas" and np.all(merged == 0)
    with pytest.raises(ValueError):
        merge_boxes(np.zeros((17, 4)), np.ones(18), np.zeros((18, 4)), 0.3)


def test_region_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 1, 1], [20, 20, 30, 30]], np.float32)
    iou = region_box_iou(a, b)
    assert iou[0] == pytest.approx(1.0)
    assert iou[1] == pytest.approx(50 / 150)
    assert np.isnan(iou[2])
    assert iou[3] == 0
    assert mean_iou([a], [b]) == pytest.approx((1 + 1 / 3 + 0) / 3)
    per = per_region_iou([a, a], [b, b])
    assert per[1] == pytest.approx(1 / 3) and np.isnan(per[2])
