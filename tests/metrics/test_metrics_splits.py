"""Train and evaluate agree on the split: the split a training run made is saved with its
checkpoint and `chextriev evaluate` scores its held-out test patients by default, for every
reader (the real NIH sample, which has no official list, included); an unknown split says which
splits exist and what to do. And the benchmark subsets (nih8, chexpert5) and the abnormality
model through train + evaluate on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chextriev.errors import UnknownNameError
from chextriev.records import Record
from chextriev.splits import (
    MIN_KNOWN_SHARE,
    SplitNotFoundError,
    apply_split,
    select_split,
    split_entry,
)

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def _records(patients: list[str], split: str | None = None) -> list[Record]:
    return [Record(source=f"{p}-{i}.png", image_id=f"{p}-{i}", patient_id=p, split=split)
            for p in patients for i in range(2)]


def test_apply_split_gives_each_record_its_patients_split():
    records = _records(["a", "b", "c", "d"])
    entry = split_entry({"train": records[:4], "validate": records[4:6], "test": records[6:]}, seed=3)
    assert entry["patients"] == {"train": ["a", "b"], "validate": ["c"], "test": ["d"]} and entry["seed"] == 3
    assert entry["images"] == {"train": 4, "validate": 2, "test": 2}
    fresh = _records(["a", "b", "c", "d", "e"], split="train")  # the dataset's own column says otherwise
    applied, source = apply_split(fresh, entry)
    assert [r.split for r in applied] == ["train"] * 4 + ["validate"] * 2 + ["test"] * 2 + [None] * 2
    assert "seed 3" in source and "2 images of patients the training run never saw are in no split" in source
    assert all(r.split == "train" for r in fresh)  # the records read are not changed in place
    # other data (few known patients) keeps its own splits; so does a checkpoint without a split
    other = _records(["a", "x", "y", "z"], split="test")
    assert 2 / len(other) < MIN_KNOWN_SHARE
    kept, source = apply_split(other, entry)
    assert [r.split for r in kept] == ["test"] * 8 and "knows the patients of 2 of 8 images" in source
    assert apply_split(other, None)[1] == "the dataset's own splits; the checkpoint records no split"


def test_unknown_split_names_the_splits_there_are_and_what_to_do():
    records = _records(["a", "b"], split="train") + _records(["c"], split="validate") + _records(["d"])
    with pytest.raises(SplitNotFoundError) as caught:
        select_split(records, "test", "/data/x", "the checkpoint's split")
    text = str(caught.value)
    assert text == ("no image of /data/x is in split 'test'. Its splits (from the checkpoint's split): train "
                    "(4 images), validate (2 images), and 2 images in none. Pass --split with one of them, or "
                    "--split all for every image.")
    assert isinstance(caught.value, UnknownNameError) and caught.value.valid == ("train", "validate", "all")
    with pytest.raises(SplitNotFoundError) as caught:
        select_split(_records(["a"]), "test", "/data/nih-sample", "the dataset's own splits; the checkpoint "
                     "records no split")
    text = str(caught.value)
    assert "valid: None" not in text and "none of its images is in a split" in text
    assert "Train the model with this chextriev" in text and "--split all" in text
    assert len(select_split(records, "all")) == 8


def _main(argv: list[str]) -> int:
    from chextriev_cli.main import main

    return main(argv)


@pytest.mark.slow
def test_nih_sample_trained_then_evaluated_on_its_held_out_patients(nih_sample, tmp_path, capsys):
    """The newcomer's path: train on the NIH sample (no official split list), evaluate with no
    split flag: its test patients, none of whose images training saw."""
    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.datasets import load_records
    from chextriev.training.data import split_records

    run = tmp_path / "run"
    assert _main(["train", "--variant", "v6", "--preset", "tiny", "--data", str(nih_sample), "--class-list", "nih",
                  "--out", str(run), "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                  "--threads", "1"]) == 0
    records = load_records(nih_sample, class_list="nih", progress=False)
    assert all(r.split is None for r in records)  # the sample has no official list
    made = split_records(records, seed=0)  # what training does with them
    saved = load_checkpoint(run / "best.ckpt").data_split
    assert saved["images"] == {name: len(items) for name, items in made.items()}
    assert saved["patients"]["test"] == sorted({r.patient_id for r in made["test"]})

    out = tmp_path / "eval"
    assert _main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--data", str(nih_sample), "--out", str(out),
                  "--k", "3", "--no-figures", "--no-localization", "--batch-size", "32"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    evaluated = set(report["image_ids"])
    assert evaluated == {r.image_id for r in made["test"]} and len(evaluated) == len(made["test"]) > 40
    seen = {r.image_id for r in made["train"] + made["validate"]}
    seen_patients = {r.patient_id for r in made["train"] + made["validate"]}
    assert not evaluated & seen
    by_id = {r.image_id: r for r in records}
    assert not {by_id[i].patient_id for i in evaluated} & seen_patients
    assert report["meta"]["split_source"].startswith("the checkpoint's split (chextriev train, seed 0")
    assert report["meta"]["class_list"] == "nih"  # the checkpoint's list
    assert report["classification"]["thresholds"] is not None  # validate: the run's validation patients
    assert "split_source" in capsys.readouterr().out


def _nih_folder(root: Path, n: int = 48, size: int = 64) -> Path:
    """``n`` NIH-format images (one patient each; findings of the 14 and No Finding) and the CSVs."""
    from chextriev.vocab import NIH_FINDINGS

    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        k = i % 6
        findings = ["No Finding"] if k == 0 else sorted({NIH_FINDINGS[(i * 3) % 14], NIH_FINDINGS[k]})
        pixels = (rng.random((size, size)) * 60 + (40 * k)).clip(0, 255).astype(np.uint8)
        name = f"{i:08d}_000.png"
        Image.fromarray(pixels).save(root / "images" / name)
        rows.append(f"{name},{'|'.join(findings)},0,{i},50,M,PA,1024,1024,0.143,0.143\n")
    (root / "Data_Entry_2017_v2020.csv").write_text(NIH_HEADER + "".join(rows))
    return root


def _chexpert_release(root: Path, n: int = 48) -> Path:
    """A CheXpert release of ``n`` frontal images with varied competition labels (1, 0, -1, blank)."""
    from chexpert_files import HEADER, _jpeg, _row

    values = ("1.0", "0.0", "-1.0", "")
    rows = []
    for i in range(n):
        cells = {name: values[(i + j) % 4] for j, name in enumerate(
            ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion"))}
        if i % 5 == 0:
            cells = {"No_Finding": "1.0"}
        rows.append(_row(f"train/patient{i + 1:05d}/study1/view1_frontal.jpg", "Male", 40, "Frontal", "PA", **cells))
    valid = [_row(f"valid/patient{90000 + i}/study1/view1_frontal.jpg", "Female", 50, "Frontal", "AP",
                  **({"Edema": "1.0"} if i % 2 else {"No_Finding": "1.0"})) for i in range(6)]
    release = root / "CheXpert-v1.0"
    release.mkdir(parents=True)
    (release / "train.csv").write_text(HEADER + "".join(rows))
    (release / "valid.csv").write_text(HEADER + "".join(valid))
    for i, row in enumerate(rows + valid):
        _jpeg(root / row.split(",")[0], value=60 + 3 * i)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout,class_list", [("nih", "nih8"), ("chexpert", "chexpert5"), ("nih", "abnormal"),
                                               ("chexpert", "abnormal")])
def test_class_lists_train_and_evaluate_on_tiny_data(layout, class_list, tmp_path):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.vocab import class_list as names_of

    data = _nih_folder(tmp_path / "nih") if layout == "nih" else _chexpert_release(tmp_path / "chexpert")
    run = tmp_path / "run"
    assert _main(["train", "--variant", "resnet50", "--preset", "tiny", "--data", str(data), "--class-list", class_list,
                  "--out", str(run), "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                  "--threads", "1"]) == 0
    loaded = load_checkpoint(run / "best.ckpt")
    assert loaded.class_names == names_of(class_list) and loaded.thresholds.shape == (len(names_of(class_list)),)
    out = tmp_path / "eval"
    assert _main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--data", str(data), "--out", str(out),
                  "--split", "all", "--k", "3", "--no-figures", "--no-localization", "--json"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["meta"]["class_list"] == class_list  # the checkpoint's list, no flag needed
    assert list(report["retrieval"]["3"]["per_class"]) == list(names_of(class_list))
    assert list(report["classification"]["auroc"]["per_class"]) == list(names_of(class_list))
    if layout == "chexpert" and class_list == "chexpert5":  # uncertain labels masked per class of the subset
        masked = report["masked_labels"]["per_class"]
        assert list(masked) == list(names_of("chexpert5")) and all(v > 0 for v in masked.values())
    if class_list == "abnormal":
        figures = report["abnormality"]
        assert figures["n_normal"] > 0 and figures["n_abnormal"] > figures["n_normal"]
        assert 0.0 <= figures["auroc"] <= 1.0 and figures["threshold"] is not None and figures["f1"] is not None
        assert figures["threshold_rule"].startswith("the checkpoint's")
        assert "abnormal: AUROC" in (out / "report.md").read_text()
