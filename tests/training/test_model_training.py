"""Training: a few steps lower the loss for every variant; splits; internal mAP@k; CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.model import TINY, VARIANTS, build_model
from chextriev.retrieval import retrieval_scores
from chextriev.training.data import split_records
from chextriev.training.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_few_steps_lower_loss(name, tiny_batch):
    images, boxes, labels, region_labels = tiny_batch
    torch.manual_seed(0)
    model = build_model(name, **TINY).train()
    with torch.no_grad():
        features = model.extract(images, boxes)  # frozen part, computed once
    mask = ~torch.isnan(boxes).any(-1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model.loss(model.forward_features(features, mask), labels, region_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_model_validation_retrieval_scores_hand_case():
    # 4 images on a line; class 0 positives: 0, 1, 3.
    embeddings = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]], np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.array([[1], [1], [0], [1]], np.float32)
    scores = retrieval_scores(embeddings, labels, k=2)
    # query 0 -> [1, 2]: rel [1, 0]: AP 1, HR .5, RR 1
    # query 1 -> [0, 2]: rel [1, 0]: AP 1, HR .5, RR 1
    # query 3 -> [2, 1]: rel [0, 1]: AP 1/2, HR .5, RR 1/2
    assert scores["mAP"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert scores["mHR"] == pytest.approx(0.5)
    assert scores["mRR"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_model_validation_and_evaluation_share_one_retrieval_core():
    """Training validation scores with the same functions as ``chextriev evaluate``."""
    import chextriev.retrieval as core
    import metrics.retrieval
    from chextriev.training import module

    assert module.retrieval_scores is core.retrieval_scores
    assert metrics.retrieval.retrieval_metrics is core.retrieval_metrics
    assert metrics.retrieval.neighbors_from_embeddings is core.neighbors_from_embeddings
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    neighbors, _ = core.neighbors_from_embeddings(embeddings, 10)
    average = core.retrieval_metrics(neighbors, labels, 10, skip=False)["class_average"]
    assert core.retrieval_scores(embeddings, labels, k=10) == pytest.approx(average)


def test_model_split_records_patient_disjoint(tiny_records):
    splits = split_records(tiny_records)
    patients = {name: {r.patient_id for r in records} for name, records in splits.items()}
    assert all(patients[name] for name in ("train", "validate", "test"))
    assert not patients["train"] & patients["validate"] and not patients["train"] & patients["test"]
    clash = [type(r)(**r.__dict__) for r in tiny_records[:5]]
    clash[3].patient_id = clash[0].patient_id  # same patient in train and validate
    with pytest.raises(DataFormatError, match="patient-disjoint"):
        split_records(clash)
    unsplit = [type(r)(**{**r.__dict__, "split": None}) for r in tiny_records]
    by_hash = split_records(unsplit)
    assert sum(map(len, by_hash.values())) == len(tiny_records) and by_hash["validate"]


def test_model_presets_and_cli_errors():
    assert {"tiny", "synthetic-small", "mimic"} <= set(PRESETS)
    mimic = get_preset("mimic")
    assert (mimic.lr, mimic.batch_size, mimic.accumulate, mimic.model["feature_mode"], mimic.model["backbone"]) == (
        1e-4, 16, 8, "crop", "resnet50")
    with pytest.raises(UnknownNameError):
        get_preset("huge")
    from chextriev_cli.main import main

    assert main(["train", "--variant", "v9", "--data", "x", "--out", "y"]) == 2


def test_model_train_cli_writes_checkpoints(tiny_records, tmp_path, monkeypatch):
    from chextriev.training import fit

    monkeypatch.setattr("chextriev.io.datasets.load_records", lambda path, **_: tiny_records)
    monkeypatch.setenv("CHEXTRIEV_CACHE", str(tmp_path / "cache"))
    from chextriev_cli.main import main

    assert main(["train", "--variant", "v1", "--preset", "tiny", "--data", str(tmp_path), "--out",
                 str(tmp_path / "run"), "--max-epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "run" / "best.ckpt").is_file() and (tmp_path / "run" / "last.ckpt").is_file()
    assert list((tmp_path / "run" / "logs").rglob("metrics.csv")) and list((tmp_path / "run" / "tb").rglob("events*"))
    metrics = (next((tmp_path / "run" / "logs").rglob("metrics.csv"))).read_text()
    assert "val_mAP10" in metrics and "train_loss" in metrics
    assert fit.TrainResult  # module imported by the CLI


def test_model_selection_metric():
    from chextriev.model import get_config
    from chextriev.training.fit import selection_metric

    assert selection_metric(get_config("v6")) == ("val_mAP10", "max")
    assert selection_metric(get_config("resnet50-projected")) == ("val_mAP10", "max")
    assert selection_metric(get_config("resnet50")) == ("val_loss", "min")  # frozen embedding
    # the whole global classifier family selects on its classification loss
    assert selection_metric(get_config("resnet50", pooling="pcam", attention="channel")) == ("val_loss", "min")
    assert selection_metric(get_config("resnet50-projected", pooling="max")) == ("val_mAP10", "max")
    assert selection_metric(get_config("resnet50", train_backbone=True)) == ("val_mAP10", "max")


def test_model_image_dataset_keeps_prepared_inputs(tiny_records, monkeypatch):
    """ATH-style datasets decode each image once when the split fits in memory; same tensors."""
    from chextriev.anatomy.atlas import Atlas
    from chextriev.model import get_config
    from chextriev.training import data

    config = get_config("ath", **TINY)
    loads = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda source: loads.append(source) or real(source))
    kept = data.ImageDataset(tiny_records[:3], config, Atlas.default(), keep_inputs=True)
    fresh = data.ImageDataset(tiny_records[:3], config, Atlas.default())
    first = [kept[i]["image"] for i in range(3)]
    second = [kept[i]["image"] for i in range(3)]
    assert len(loads) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(a, fresh[i]["image"]) for i, a in enumerate(first))
    assert data.input_bytes(config) == 4 * 64 * 64
    assert data.input_bytes(get_config("v6", **TINY, feature_mode="crop")) == 4 * 18 * 32 * 32
