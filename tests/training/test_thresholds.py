"""Finding thresholds: max F1 on validation, saved in checkpoints, old checkpoints still load,
F1 columns in the evaluation reports."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from chextriev.checkpoint import THRESHOLDS_KEY, CheckpointError, load_checkpoint, read_checkpoint
from chextriev.training.thresholds import max_f1_threshold, max_f1_thresholds


def brute_force(labels, scores):
    best = (-1.0, None)
    for t in sorted(set(scores), reverse=True):
        pred = scores >= t
        tp, fp, fn = (pred & (labels == 1)).sum(), (pred & (labels == 0)).sum(), (~pred & (labels == 1)).sum()
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0] + 1e-12:
            best = (f1, t)
    return best[1], best[0]


def test_max_f1_threshold_hand_case_and_undefined():
    labels = np.array([1, 0, 1, 0, 1], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    # t=0.9: F1 2/4; t=0.7: tp 2 fp 1 fn 1 -> 4/6; t=0.1: tp 3 fp 2 -> 6/8 (best)
    assert max_f1_threshold(labels, scores) == (pytest.approx(0.1), pytest.approx(0.75))
    assert np.isnan(max_f1_threshold(np.zeros(4), np.arange(4.0))[0])
    with_unknown = np.array([1, np.nan, 0], np.float32)
    assert max_f1_threshold(with_unknown, np.array([0.6, 0.99, 0.1]))[0] == pytest.approx(0.6)


def test_max_f1_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 5)) < 0.3).astype(np.float32)
    scores = np.round(rng.random((60, 5)) * 0.5 + labels * 0.3, 2)  # ties included
    thresholds, f1 = max_f1_thresholds(labels, scores)
    for c in range(5):
        t, best = brute_force(labels[:, c], scores[:, c])
        assert thresholds[c] == pytest.approx(t) and f1[c] == pytest.approx(best)


def test_training_saves_the_validation_thresholds_of_the_selected_epoch(tiny_checkpoint, tiny_records):
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image

    entry = read_checkpoint(tiny_checkpoint)[THRESHOLDS_KEY]
    loaded = load_checkpoint(tiny_checkpoint)
    assert entry["rule"] == "max F1 on the validation split" and entry["class_names"] == list(loaded.class_names)
    assert loaded.thresholds.shape == (len(loaded.class_names),)
    validation = [r for r in tiny_records if r.split == "validate"]
    assert entry["n_images"] == len(validation)
    batch = embed_images(loaded, [load_image(r.source) for r in validation], [r.boxes for r in validation])
    expected, _ = max_f1_thresholds(np.stack([r.labels for r in validation]), batch.probabilities)
    np.testing.assert_allclose(loaded.thresholds, expected, atol=1e-5, equal_nan=True)
    filled = loaded.finding_thresholds()
    assert np.isfinite(filled).all() and (filled[np.isnan(loaded.thresholds)] == 0.5).all()


def test_a_checkpoint_without_thresholds_still_loads_and_says_so(tiny_checkpoint, tmp_path, caplog):
    data = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    data.pop(THRESHOLDS_KEY)
    old = tmp_path / "old.ckpt"
    torch.save(data, old)
    with caplog.at_level(logging.INFO, logger="chextriev.checkpoint"):
        loaded = load_checkpoint(old)
    assert loaded.thresholds is None and (loaded.finding_thresholds() == 0.5).all()
    assert any("no finding thresholds" in r.getMessage() for r in caplog.records)
    data[THRESHOLDS_KEY] = {"class_names": ["a"], "values": [0.3]}
    torch.save(data, old)
    with pytest.raises(CheckpointError, match="thresholds are for classes"):
        load_checkpoint(old)


def test_evaluation_report_has_f1_beside_auroc():
    from metrics.evaluate import EvaluationInputs, evaluate_arrays
    from metrics.report import markdown

    rng = np.random.default_rng(1)
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    scores = np.clip(labels * 0.4 + rng.random((40, 3)) * 0.6, 0, 1)
    inputs = EvaluationInputs(embeddings=rng.normal(size=(40, 4)).astype(np.float32), labels=labels,
                              class_names=["a", "b", "c"], probabilities=scores, val_labels=labels[:20],
                              val_probabilities=scores[:20], saved_thresholds=np.array([0.5, np.nan, 0.9]),
                              saved_threshold_rule="max F1 on the validation split",
                              meta={"checkpoint": "x.ckpt"})
    report = evaluate_arrays(inputs)
    cls = report["classification"]
    chosen, _ = max_f1_thresholds(labels[:20], scores[:20])
    assert cls["f1"]["per_class"]["a"]["threshold"] == pytest.approx(chosen[0])
    pred = scores[:, 0] >= chosen[0]
    tp, fp, fn = (pred & (labels[:, 0] == 1)).sum(), (pred & (labels[:, 0] == 0)).sum(), (~pred & (labels[:, 0] == 1)).sum()
    assert cls["f1"]["per_class"]["a"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert cls["saved_thresholds"]["per_class"]["b"]["f1"] is None  # no saved threshold for b
    assert cls["saved_thresholds"]["per_class"]["c"]["threshold"] == pytest.approx(0.9)
    text = markdown(report)
    assert "| class | AUROC | F1 | threshold (val, max F1) | F1 (checkpoint threshold)" in text
    assert "Mean test F1 at the checkpoint's thresholds" in text
