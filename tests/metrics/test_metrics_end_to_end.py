"""`chextriev evaluate` on a tiny untrained checkpoint and a tiny PNG folder, end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from metrics.cli import register


def run(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_evaluate_writes_reports_and_figures(tiny_checkpoint, tiny_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = run(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--split", "test",
              "--k", "1", "3", "--out", str(out), "--no-skip", "--exclude-same", "patient", "--batch-size", "4"])
    assert rc == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["n_images"] == 8 and data["options"]["skip"] is False
    assert data["options"]["exclude_same"] == "patient"
    assert set(data["retrieval"]) == {"1", "3"}
    per = data["retrieval"]["3"]["per_class"]
    assert per["lung opacity"]["n_queries"] == 2  # images 0 and 6 (6 = 3*2, normal is 3 and 7)
    assert per["pneumonia"]["mAP"] is None  # no image of that class: undefined
    assert data["classification"]["auroc"]["per_class"]["pneumonia"] is None
    assert data["classification"]["thresholds"]["chosen_on"].startswith("validation")
    assert data["meta"]["variant"] == "v1" and len(data["meta"]["checkpoint_id"]) == 16
    for name in ("retrieval.csv", "report.md", "retrieval_per_class.png", "query_grid.png", "auroc_per_class.png"):
        assert (out / name).stat().st_size > 0, name
    assert "skip=False" in (out / "report.md").read_text()
    assert "class average" in capsys.readouterr().out


def test_embedding_rows_agree_with_direct_call(tiny_checkpoint, tiny_folder):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.datasets import load_records
    from chextriev.io.images import load_image
    from metrics.model_eval import embed_records

    loaded = load_checkpoint(tiny_checkpoint)
    records = load_records(tiny_folder)[:5]
    chunked = embed_records(loaded, records, batch_size=2)
    direct = embed_images(loaded, [load_image(r.source) for r in records])
    assert np.allclose(chunked.embeddings, direct.embeddings, atol=1e-5)
    assert len(chunked.thumbnails) == 5


def test_unknown_split_lists_present_ones(tiny_checkpoint, tiny_folder, tmp_path):
    from chextriev.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="validate"):
        run(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--split", "train",
             "--out", str(tmp_path)])


@pytest.mark.slow
def test_evaluate_on_synthetic_archive_with_trained_tiny_checkpoint(tmp_path):
    pytest.importorskip("chextriev.training.quick")
    from chextriev.synth.cli import register as register_synth
    from chextriev.training.quick import train_tiny_checkpoint

    parser = argparse.ArgumentParser()
    register_synth(parser.add_subparsers(dest="command"))
    archive = tmp_path / "archive"
    args = parser.parse_args(["synth", "--out", str(archive), "--patients", "6", "--seed", "0", "--size", "128"])
    assert args.func(args) == 0
    ckpt = train_tiny_checkpoint(archive, tmp_path / "run", "v1")
    out = tmp_path / "eval"
    assert run(["evaluate", "--checkpoint", str(ckpt), "--data", str(archive), "--split", "all",
                "--k", "3", "--out", str(out), "--loc-max-images", "4"]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert data["region_auroc"] is not None  # synthetic region labels are scored
    block = data["localization"]["synthetic lesions"]  # Grad-CAM boxes against drawn lesions
    assert block["n_images"] >= 1 and block["boxes"]["n_cases"] >= 1
    assert set(block["boxes"]["iou"]) == {str(t) for t in block["boxes"]["thresholds"]}
    assert block["pixels"]["n_cases"] >= 1  # synthetic lesions carry masks: TIoU/TIoR
    assert "Pixel-level localization" in (out / "report.md").read_text()
