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


def test_headline_scores_are_the_sweep_row_computed_by_hand(tmp_path):
    """metrics.model_eval.headline_scores (what the variant sweep and the training benchmarks
    score a checkpoint with) gives the numbers of the sweep's earlier own code: embed_images on
    the records' boxes, exact top-k (self excluded), class-average mAP/mHR/mRR at skip=False,
    the mean image AUROC and the mean region AUROC over the boxes present."""
    import torch

    from chextriev.checkpoint import LoadedModel
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image
    from chextriev.model import TINY, build_model
    from chextriev.retrieval import neighbors_from_embeddings, retrieval_metrics_at
    from chextriev.training.quick import synthetic_records
    from metrics.classification import per_class_auroc
    from metrics.localization import region_auroc
    from metrics.model_eval import headline_scores

    records = synthetic_records(tmp_path, n=24, size=64)
    torch.manual_seed(0)
    loaded = LoadedModel.from_model(build_model("v6", **TINY))
    row = headline_scores(loaded, records, (3, 5))

    batch = embed_images(loaded, [load_image(r.source) for r in records], [r.boxes for r in records])
    labels = np.stack([r.labels for r in records])
    retrieval = retrieval_metrics_at(neighbors_from_embeddings(batch.embeddings, 5)[0], labels, (3, 5), skip=False)
    for k in (3, 5):
        for metric in ("mAP", "mHR", "mRR"):
            assert row[f"{metric}@{k}"] == pytest.approx(retrieval[k]["class_average"][metric], abs=1e-6)
    assert row["AUROC"] == pytest.approx(per_class_auroc(labels, batch.probabilities)["mean"], abs=1e-6)
    expected = region_auroc(np.stack([r.region_labels for r in records]), batch.region_probabilities,
                            np.stack([r.box_mask for r in records]))["mean"]
    assert row["region_AUROC"] == pytest.approx(expected, abs=1e-6)
