"""evaluate_arrays end to end from arrays, and the JSON/CSV/markdown/PNG writers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from metrics.evaluate import EvaluationInputs, EvaluationOptions, evaluate_arrays
from metrics.figures import auroc_bars, per_class_bars, pick_queries, query_grid
from metrics.report import fmt, write_report
from metrics.retrieval import retrieval_metrics


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    n, c = 24, 3
    labels = (rng.random((n, c)) < 0.35).astype(np.float32)
    labels[:, 2] = 0  # an empty class
    emb = labels @ rng.normal(size=(c, 8)) + 0.3 * rng.normal(size=(n, 8))
    probs = np.clip(labels * 0.6 + 0.4 * rng.random((n, c)), 0, 1)
    rl = np.zeros((n, 18, c), dtype=np.float32)
    rl[:, 3, :] = labels
    rp = np.clip(rl * 0.5 + 0.5 * rng.random((n, 18, c)), 0, 1)
    return EvaluationInputs(
        embeddings=emb.astype(np.float32),
        labels=labels,
        class_names=["a", "b", "c"],
        image_ids=[f"i{i}" for i in range(n)],
        patient_ids=[f"p{i // 2}" for i in range(n)],
        probabilities=probs,
        region_probabilities=rp,
        region_labels=rl,
        val_labels=labels,
        val_probabilities=probs,
        meta={"variant": "test"},
    )


def test_evaluate_arrays_consistent_with_retrieval_metrics(inputs):
    opts = EvaluationOptions(ks=(3, 5), skip=False, exclude_same="patient")
    report = evaluate_arrays(inputs, opts)
    nb = report["neighbors"]
    assert nb.shape == (24, 5)
    # no result shares the query's patient
    pats = np.array(inputs.patient_ids)
    assert not (pats[nb] == pats[:, None]).any()
    direct = retrieval_metrics(nb, inputs.labels, 3, skip=False, class_names=["a", "b", "c"], hit_rate=True)
    assert report["retrieval"][3]["class_average"] == direct["class_average"]
    assert report["retrieval"][3]["per_class"]["c"]["mAP"] is None
    assert report["classification"]["auroc"]["per_class"]["c"] is None
    assert report["region_auroc"]["per_region"]["right mid lung zone"]["a"] is not None
    assert "patient" in report["options_text"] and "skip=False" in report["options_text"]


def test_writers_and_figures(inputs, tmp_path):
    report = evaluate_arrays(inputs, EvaluationOptions(ks=(3,)))
    paths = write_report(report, tmp_path, title="T")
    data = json.loads(paths["json"].read_text())
    assert data["options"]["skip"] is True and "neighbors" not in data
    assert data["retrieval"]["3"]["per_class"]["c"]["mAP"] is None
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["class"] for r in rows] == ["a", "b", "c", "class_average", "weighted_average"]
    assert rows[2]["mAP"] == ""
    md = paths["markdown"].read_text()
    assert "skip=True" in md and "| class average |" in md and "Undefined" in md
    bars = per_class_bars(report, tmp_path / "bars.png")
    au = auroc_bars(report, tmp_path / "auroc.png")
    thumbs = [np.full((16, 16), i / 24, dtype=np.float32) for i in range(24)]
    qs = pick_queries(inputs.labels, 3)
    assert 1 <= len(qs) <= 3 and all(inputs.labels[q].sum() > 0 for q in qs)
    grid = query_grid(thumbs, inputs.labels, ["a", "b", "c"], report["neighbors"], qs, tmp_path / "grid.png", 3)
    for p in (bars, au, grid):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fmt():
    assert fmt(0.4812) == ".481" and fmt(None) == "n/a" and fmt(1.0) == "1.000"
