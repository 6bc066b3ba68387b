"""NIH ChestX-ray14: the real sample (621 images) and small files written in the release format."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chextriev.errors import DataFormatError
from chextriev.io.images import read_image
from chextriev.io.nih import read_bbox_list, read_nih
from chextriev.vocab import IMAGENOME_FINDINGS, NIH_FINDINGS

HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"


@pytest.fixture(scope="module")
def sample_records(nih_sample):
    return read_nih(nih_sample, "nih", progress=False)


@pytest.mark.slow
def test_sample_all_images_load(nih_sample, sample_records):
    assert len(sample_records) == 621
    modes = Counter()
    for rec in sample_records:
        loaded = read_image(rec.source)
        modes[loaded.meta["mode"]] += 1
        px = loaded.pixels
        assert px.shape == (512, 512) and px.dtype == np.float32
        assert 0.0 <= px.min() and px.max() <= 1.0 and px.std() > 0.01, rec.image_id
    assert modes == {"L": 615, "RGBA": 6}


def test_sample_labels_match_official_csv(nih_sample, sample_records):
    table = pd.read_csv(nih_sample / "metadata" / "Data_Entry_2017_v2020.csv.gz", index_col=False)
    table = table.set_index("Image Index")
    for rec in sample_records:
        row = table.loc[rec.meta["image_index"]]
        truth = set(row["Finding Labels"].split("|")) - {"No Finding"}
        got = {NIH_FINDINGS[i] for i in np.flatnonzero(rec.labels)}
        assert got == truth, rec.image_id
        assert rec.patient_id == str(row["Patient ID"]) and rec.view == row["View Position"]
        assert rec.meta["age"] == row["Patient Age"] and rec.meta["sex"] == row["Patient Gender"]
    normals = sum(r.is_normal for r in sample_records)
    assert normals == 100  # README: No Finding 100
    counts = np.sum([r.labels for r in sample_records], axis=0)
    assert (
        counts[NIH_FINDINGS.index("Infiltration")] == 123
        and counts[NIH_FINDINGS.index("Edema")] == 18
    )


def test_sample_boxes_land_where_the_csv_says(nih_sample, sample_records):
    raw = pd.read_csv(
        nih_sample / "metadata" / "BBox_List_2017.csv.gz", header=None, skiprows=1, usecols=range(6)
    )
    raw.columns = ["index", "finding", "x", "y", "w", "h"]
    boxed = [r for r in sample_records if r.meta["lesion_boxes"]]
    assert len(boxed) == 12
    for rec in boxed:
        rows = raw[raw["index"] == rec.meta["image_index"]]
        assert len(rows) == len(rec.meta["lesion_boxes"])
        for (_, row), lesion in zip(rows.iterrows(), rec.meta["lesion_boxes"]):
            expected = np.array([row.x, row.y, row.x + row.w, row.y + row.h]) * 0.5  # 1024 -> 512
            np.testing.assert_allclose(lesion["box"], expected, rtol=1e-9)
            finding = "Infiltration" if row.finding == "Infiltrate" else row.finding
            assert lesion["finding"] == finding and finding in NIH_FINDINGS
            assert rec.labels[NIH_FINDINGS.index(finding)] == 1  # a boxed finding is a label
            assert 0 <= lesion["box"][0] < lesion["box"][2] <= 512


def _write_tiny_release(root, *, size=64, gz=True):
    (root / "images_001" / "images").mkdir(parents=True)
    for name, mode in (
        ("00000001_000.png", "L"),
        ("00000001_001.png", "RGBA"),
        ("00000002_000.png", "L"),
    ):
        Image.new(mode, (size, size), 128 if mode == "L" else (10, 20, 30, 255)).save(
            root / "images_001" / "images" / name
        )
    rows = [
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,57,M,PA,2682,2749,0.143,0.143\n",
        "00000001_001.png,No Finding,1,1,58,M,AP,2894,2729,0.143,0.143\n",
        "00000002_000.png,Infiltration|Mass,0,2,81,F,PA,2500,2048,0.171,0.171\n",
        "00000003_000.png,Hernia,0,3,30,F,PA,2500,2048,0.171,0.171\n",  # not on disk
    ]
    opener = gzip.open if gz else open
    with opener(root / ("Data_Entry_2017_v2020.csv" + (".gz" if gz else "")), "wt") as fh:
        fh.write(HEADER + "".join(rows))
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000002_000.png,Infiltrate,512,256,128,64\n"
        "00000002_000.png,Mass,0,0,1024,1024\n"
    )
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")


def test_tiny_release_layout(tmp_path):
    _write_tiny_release(tmp_path)
    recs = {r.image_id: r for r in read_nih(tmp_path, progress=False)}
    assert set(recs) == {"00000001_000", "00000001_001", "00000002_000"}
    assert recs["00000001_001"].is_normal and recs["00000001_001"].split == "train"
    r = recs["00000002_000"]
    assert r.split == "test" and r.image_size == (64, 64)
    assert [b["finding"] for b in r.meta["lesion_boxes"]] == ["Infiltration", "Mass"]
    np.testing.assert_allclose(r.meta["lesion_boxes"][0]["box"], (32, 16, 40, 20))  # x 64/1024
    np.testing.assert_allclose(r.meta["lesion_boxes"][1]["box"], (0, 0, 64, 64))
    assert r.meta["original_size"] == (2048, 2500)
    all_rows = read_nih(tmp_path, only_existing=False, progress=False)
    assert len(all_rows) == 4


def test_imagenome_class_list_through_mapping(tmp_path):
    _write_tiny_release(tmp_path, gz=False)
    r = {x.image_id: x for x in read_nih(tmp_path, "imagenome", progress=False)}["00000002_000"]
    assert r.class_names == IMAGENOME_FINDINGS
    assert r.labels[IMAGENOME_FINDINGS.index("lung opacity")] == 1 and r.labels.sum() == 1
    assert r.meta["unmapped_findings"] == ["Mass"]


def test_bbox_quirks_and_errors(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Infiltrate,1,2,3,4\n")
    assert read_bbox_list(path) == {"a.png": [("Infiltration", 1.0, 2.0, 4.0, 6.0)]}
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2\n")
    with pytest.raises(DataFormatError, match="6 fields"):
        read_bbox_list(path)
    with pytest.raises(DataFormatError, match="Data_Entry"):
        read_nih(tmp_path)
