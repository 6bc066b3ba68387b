"""Masked labels (NaN entries, e.g. CheXpert's uncertain labels under ``uncertainty="mask"``) end
to end in the metrics: never a query, never relevant, left out of AUROC and thresholds, kept in
the evaluated set, and the label policy stated in every report."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from chexpert_files import write_release

from chextriev.records import Record
from metrics.classification import classification_report, per_class_auroc
from metrics.evaluate import EvaluationInputs, EvaluationOptions, evaluate_arrays
from metrics.model_eval import Embedded, build_inputs
from metrics.report import markdown
from metrics.retrieval import retrieval_metrics

NAN = np.nan


def test_auroc_ignores_masked_entries():
    labels = np.array([[1, 0], [0, 1], [NAN, 1], [1, NAN], [0, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 0.7], [0.95, 0.9], [0.3, 0.2]])
    got = per_class_auroc(labels, scores)["per_class"]
    keep0 = ~np.isnan(labels[:, 0])
    expected0 = per_class_auroc(labels[keep0][:, :1], scores[keep0][:, :1])["per_class"][0]
    assert got[0] == pytest.approx(expected0) and got[0] == pytest.approx(1.0)
    # class 0 as if the masked image were a negative (score 0.0 ranks lowest: no change) vs positive
    as_positive = labels.copy()
    as_positive[2, 0] = 1
    assert per_class_auroc(as_positive, scores)["per_class"][0] < got[0]
    thresholds = classification_report(labels, scores, val_labels=labels, val_scores=scores)["thresholds"]
    assert thresholds["per_class"][0]["support"] == 2  # the masked image is not counted


def test_retrieval_masked_is_neither_query_nor_relevant():
    labels = np.array([[1, 0], [1, 0], [NAN, 1], [0, 1], [1, 1]], dtype=np.float32)
    neighbors = np.array([[2, 1, 4], [2, 0, 4], [0, 1, 3], [2, 4, 0], [2, 3, 0]])
    masked = retrieval_metrics(neighbors, labels, k=3, skip=False)
    zero = labels.copy()
    zero[2, 0] = 0
    one = labels.copy()
    one[2, 0] = 1
    assert masked["per_class"][0] == retrieval_metrics(neighbors, zero, k=3, skip=False)["per_class"][0]
    assert masked["per_class"][0]["n_queries"] == 3  # rows 0, 1, 4: the masked row is no query
    as_one = retrieval_metrics(neighbors, one, k=3, skip=False)["per_class"][0]
    assert as_one["n_queries"] == 4 and as_one["mAP"] != masked["per_class"][0]["mAP"]
    # row 2 is the first result of queries 0, 1 and 4: masked, it is a miss at rank 1
    assert masked["per_class"][0]["mRR"] == pytest.approx(np.mean([1 / 2, 1 / 2, 1 / 3]))


def _records(labels):
    names = ("a", "b")
    return [Record(source=f"x{i}.png", image_id=f"x{i}", patient_id=f"p{i}", class_names=names,
                   labels=None if row is None else np.asarray(row, np.float32))
            for i, row in enumerate(labels)]


class _Loaded:
    class_names = ("a", "b")


def _embedded(n):
    rng = np.random.default_rng(0)
    return Embedded(embeddings=rng.normal(size=(n, 4)).astype(np.float32),
                    probabilities=rng.random((n, 2)).astype(np.float32), region_probabilities=None,
                    boxes=np.full((n, 18, 4), np.nan, np.float32), box_sources=["atlas"] * n, thumbnails=[])


def test_partially_masked_images_stay_in_the_evaluated_set():
    rows = [[1, 0], [NAN, 1], [1, NAN], None, [0, 0], [1, 1]]
    inputs = build_inputs(_Loaded(), _records(rows), _embedded(len(rows)), meta={"label_policy": "test policy"})
    assert inputs.image_ids == ["x0", "x1", "x2", "x4", "x5"]  # only the fully unknown image is dropped
    assert np.isnan(inputs.labels).sum() == 2
    report = evaluate_arrays(inputs, EvaluationOptions(ks=(2,), skip=False))
    assert report["masked_labels"] == {"n_entries": 2, "n_images": 2, "per_class": {"a": 1, "b": 1}}
    assert report["n_normal"] == 1
    assert report["retrieval"][2]["per_class"]["a"]["n_queries"] == 3
    text = markdown(report)
    assert "- label_policy: test policy" in text and "masked label entries: 2 on 2 images" in text


def test_csv_and_summary_state_the_label_policy(tmp_path):
    import csv

    from metrics.report import write_csv, write_json
    from metrics.summary import summary_markdown

    labels = np.array([[1, 0], [NAN, 1], [0, 1], [1, 1]], np.float32)
    inputs = EvaluationInputs(embeddings=np.eye(4, dtype=np.float32), labels=labels, class_names=["a", "b"],
                              meta={"label_policy": "CheXpert labels: uncertain (-1) -> masked"})
    report = evaluate_arrays(inputs, EvaluationOptions(ks=(2,), skip=False))
    rows = list(csv.DictReader(write_csv(report, tmp_path / "retrieval.csv").open()))
    assert rows and {r["label_policy"] for r in rows} == {"CheXpert labels: uncertain (-1) -> masked"}
    (tmp_path / "chexpert" / "v6" / "no-skip").mkdir(parents=True)
    write_json(report, tmp_path / "chexpert" / "v6" / "no-skip" / "metrics.json")
    assert "Labels: CheXpert labels: uncertain (-1) -> masked" in summary_markdown(tmp_path / "chexpert")


def test_evaluate_arrays_without_masks_reports_none():
    labels = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    report = evaluate_arrays(EvaluationInputs(embeddings=np.eye(3, 4, dtype=np.float32), labels=labels,
                                              class_names=["a", "b"]), EvaluationOptions(ks=(1,)))
    assert report["masked_labels"] is None


def _run(argv):
    from metrics.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_evaluate_on_chexpert_states_the_policy(tiny_checkpoint, tmp_path):
    write_release(tmp_path / "data")
    out = tmp_path / "eval"
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "data"),
            "--class-list", "chexpert", "--split", "test", "--k", "3", "--no-figures", "--batch-size", "8"]
    assert _run(base + ["--out", str(out)]) == 0  # the reader's default: uncertain masked
    data = json.loads((out / "metrics.json").read_text())
    assert "uncertain (-1) -> masked" in data["meta"]["label_policy"]
    assert "label_policy: CheXpert labels" in (out / "report.md").read_text()
    assert _run(base + ["--out", str(out / "ones"), "--uncertainty", "ones"]) == 0
    ones = json.loads((out / "ones" / "metrics.json").read_text())
    assert "U-Ones" in ones["meta"]["label_policy"] and ones["masked_labels"] is None
    assert ones["n_images"] == data["n_images"]
    cardio = data["classification"]["auroc"]["per_class"]  # ImaGenome model, CheXpert data: shared classes
    assert "Cardiomegaly" in cardio and "Support Devices" not in cardio


def test_policy_options_refused_for_other_data(tiny_checkpoint, tiny_folder, tmp_path):
    from chextriev.errors import DataFormatError

    with pytest.raises(DataFormatError, match="CheXpert data only"):
        _run(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder),
              "--uncertainty", "ones", "--out", str(tmp_path)])
