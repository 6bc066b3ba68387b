import argparse
import json

import numpy as np
import pytest

from chextriev.anatomy import cli
from chextriev.anatomy.detector import AnatomyDetector
from chextriev.errors import ChextrievError
from chextriev.records import Record


def _parser():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser


def test_parser_defaults_and_choices():
    args = _parser().parse_args(["train-detector", "--data", "d", "--out", "o.pt"])
    assert (args.epochs, args.image_size, args.backbone, args.augment) == (20, 512, "resnet50", True)
    with pytest.raises(SystemExit):
        _parser().parse_args(["train-detector", "--data", "d", "--out", "o", "--backbone", "vgg"])


def test_cli_trains_and_reports_validation(monkeypatch, tmp_path, phantoms, capsys):
    images, boxes = phantoms(6, size=(64, 64))
    store = {f"mem{i}": image for i, image in enumerate(images)}
    records = [Record(source=f"mem{i}", image_id=str(i), boxes=b, image_size=(64, 64),
                      split="train" if i < 4 else "validate") for i, b in enumerate(boxes)]
    monkeypatch.setattr("chextriev.io.datasets.load_records", lambda path: records)
    monkeypatch.setattr("chextriev.io.images.load_image", lambda source: store[source])
    out = tmp_path / "det.pt"
    args = _parser().parse_args(["train-detector", "--data", "x", "--out", str(out), "--epochs", "1",
                                 "--image-size", "64", "--backbone", "small", "--device", "cpu"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_images"] == 4 and summary["validation_images"] == 2
    assert 0.0 <= summary["atlas_mean_iou"] <= 1.0 and 0.0 <= summary["detector_mean_iou"] <= 1.0
    detector = AnatomyDetector.load(out)
    assert detector.extra["validation"]["validation_images"] == 2
    assert np.isfinite(detector.extra["atlas"]["boxes"]).all()


def test_cli_refuses_data_without_boxes(monkeypatch, tmp_path):
    monkeypatch.setattr("chextriev.io.datasets.load_records",
                        lambda path: [Record(source="a.png", image_id="a", split="train")])
    args = _parser().parse_args(["train-detector", "--data", "x", "--out", str(tmp_path / "d.pt")])
    with pytest.raises(ChextrievError, match="region boxes"):
        args.func(args)
