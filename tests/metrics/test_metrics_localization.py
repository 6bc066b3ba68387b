"""Box IoU/IoBB, ChestX-ray8 accuracy, HAM pixel metrics and region AUROC on hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from chextriev.errors import UnknownNameError
from chextriev.localization.regions import heatmap_mask, heatmap_to_boxes
from metrics.localization import (
    BoxCase,
    best_overlap,
    box_iobb,
    box_iou,
    box_localization,
    mask_overlaps,
    pixel_localization,
    region_auroc,
)


def test_iou_and_iobb_hand_computed():
    pred = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 0, 0]])
    gt = np.array([[0, 0, 10, 10], [0, 0, 20, 20]])
    iou = box_iou(pred, gt)
    assert iou[0, 0] == 1.0
    assert iou[1, 0] == pytest.approx(25 / 175)
    assert iou[0, 1] == pytest.approx(100 / 400)
    assert iou[2].tolist() == [0.0, 0.0] and iou[3].tolist() == [0.0, 0.0]
    iobb = box_iobb(pred, gt)
    assert iobb[1, 0] == pytest.approx(25 / 100)
    assert iobb[0, 1] == pytest.approx(1.0)  # predicted box inside the true box
    assert iobb[3, 0] == 0.0
    assert best_overlap(pred, gt, "iobb") == 1.0
    assert best_overlap(np.zeros((0, 4)), gt) == 0.0
    with pytest.raises(UnknownNameError, match="iobb"):
        best_overlap(pred, gt, "dice")


def test_box_accuracy_counts_cases_hit_by_any_box():
    cases = [
        BoxCase("a", "x", np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])),  # iou 1
        BoxCase("b", "x", np.array([[0, 0, 10, 10]]), np.array([[40, 40, 50, 50], [5, 0, 15, 10]])),  # best 50/150
        BoxCase("c", "y", np.array([[0, 0, 10, 10]]), np.zeros((0, 4))),  # no prediction: miss
        BoxCase("d", "y", np.array([[0, 0, 100, 100]]), np.array([[0, 0, 10, 10]])),  # iou .01, iobb 1
    ]
    r = box_localization(cases, thresholds=(0.1, 0.3, 0.5))
    assert r["iou"] == {0.1: 0.5, 0.3: 0.5, 0.5: 0.25}
    assert r["iobb"] == {0.1: 0.75, 0.3: 0.75, 0.5: 0.5}  # b: iobb exactly .5, not above
    assert r["per_finding"]["y"]["n_cases"] == 2
    assert r["per_finding"]["y"]["iobb"][0.5] == 0.5
    assert r["mean_iou"] == pytest.approx((1 + 1 / 3 + 0 + 0.01) / 4)


def test_pixel_masks_ham():
    heat = np.zeros((4, 4))
    heat[:2, :2] = 1.0
    heat[:2, 2:] = 0.4
    assert heatmap_mask(heat, 0.5).sum() == 4
    assert heatmap_mask(np.zeros((3, 3))).sum() == 0  # a map of nothing localises nothing
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :] = True  # 8 px
    iou, ior = mask_overlaps(heatmap_mask(heat, 0.5), gt)
    assert (iou, ior) == (0.5, 1.0)
    r = pixel_localization([heat, heat], [gt, ~gt], thresholds=(0.25, 0.75), mask_threshold=0.3)
    # mask at 0.3: 8 px == gt -> (1, 1); against ~gt -> (0, 0)
    assert r["TIoU"] == {0.25: 0.5, 0.75: 0.5}
    assert r["TIoR"] == {0.25: 0.5, 0.75: 0.5}
    with pytest.raises(ValueError, match="shapes"):
        mask_overlaps(np.zeros((2, 2)), np.zeros((3, 3)))


def test_pixel_masks_are_the_mask_the_viewer_shows():
    """One heatmap-to-mask rule: the evaluator scores the mask of the product (a fraction of the
    maximum, whose boxes the viewer draws), also for a map with a floor, where binarising the
    min-max normalised map would keep only the hottest part."""
    heat = np.full((4, 4), 0.5)
    heat[:2, :2] = 1.0
    heat[:2, 2:] = 0.7
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :] = True
    assert heatmap_to_boxes(heat, threshold=0.6, min_area=1) == [(0.0, 0.0, 4.0, 2.0)]  # what the viewer draws
    r = pixel_localization([heat], [gt], thresholds=(0.9,), mask_threshold=0.6)
    assert (r["mean_iou"], r["mean_ior"]) == (1.0, 1.0)  # the min-max rule would give IoU 0.5


def test_region_auroc_masks_missing_regions():
    y = np.zeros((4, 18, 2))
    p = np.zeros((4, 18, 2))
    y[:2, 0, 0] = 1
    p[:, 0, 0] = [0.9, 0.8, 0.1, 0.95]
    mask = np.ones((4, 18), dtype=bool)
    r = region_auroc(y, p, class_names=["a", "b"])
    assert r["per_region"]["right lung"]["a"] == pytest.approx(0.5)
    assert r["per_region"]["right lung"]["b"] is None
    assert r["n_defined"] == 1
    mask[3, 0] = False  # the misleading negative's region is missing: not scored
    r = region_auroc(y, p, mask, class_names=["a", "b"])
    assert r["per_region"]["right lung"]["a"] == pytest.approx(1.0)
    assert r["mean"] == pytest.approx(1.0) and r["per_finding_mean"]["b"] is None
