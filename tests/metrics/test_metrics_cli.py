"""`chextriev evaluate` parser, split selection and the summary table."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from chextriev.errors import UnknownNameError
from chextriev.records import Record
from metrics.cli import register, select_split
from metrics.evaluate import EvaluationInputs, EvaluationOptions, evaluate_arrays
from metrics.report import write_json
from metrics.summary import TABLE_ROWS, summary_markdown


def parser():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


def test_parser_defaults_and_flags():
    args = parser().parse_args(["evaluate", "--checkpoint", "a.ckpt", "--data", "d"])
    assert args.k == [3, 5, 10] and args.skip is True and args.exclude_same == "none"
    assert args.split == "test" and args.empty_class == "undefined"
    args = parser().parse_args(
        ["evaluate", "--checkpoint", "a.ckpt", "--data", "d", "--no-skip", "--k", "1", "2", "--exclude-same", "patient"]
    )
    assert args.skip is False and args.k == [1, 2] and args.exclude_same == "patient"
    with pytest.raises(SystemExit):
        parser().parse_args(["evaluate", "--checkpoint", "a", "--data", "d", "--exclude-same", "site"])


def test_select_split_names_present_splits():
    recs = [Record(source="x", image_id=str(i), split=s) for i, s in enumerate(["train", "test", "test"])]
    assert len(select_split(recs, "test")) == 2 and len(select_split(recs, "all")) == 3
    with pytest.raises(UnknownNameError, match="train"):
        select_split(recs, "validate")


def test_summary_in_published_order(tmp_path):
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 2)) < 0.5).astype(np.float32)
    for variant in ("v6", "resnet50"):
        report = evaluate_arrays(
            EvaluationInputs(rng.normal(size=(12, 4)), labels, ["a", "b"]), EvaluationOptions(skip=False)
        )
        out = tmp_path / "mimic" / variant / "no-skip"
        out.mkdir(parents=True)
        write_json(report, out / "metrics.json")
    text = summary_markdown(tmp_path / "mimic")
    rows = [line for line in text.splitlines() if line.startswith(("| ResNet50", "| V6"))]
    assert rows[0].startswith("| ResNet50 global") and rows[1].startswith("| V6")
    assert "Not evaluated" in text and "v0-image" in text
    assert "Published" in text and "skip=False" in text
    value = json.loads((tmp_path / "mimic/v6/no-skip/metrics.json").read_text())["retrieval"]["3"]["class_average"]["mAP"]
    assert f"{value:.3f}"[1:] in rows[1]


def test_summary_rows_are_the_variant_table():
    from chextriev.model.config import VARIANT_LABELS, VARIANTS

    assert [key for key, _ in TABLE_ROWS] == list(VARIANTS)
    assert dict(TABLE_ROWS) == VARIANT_LABELS
