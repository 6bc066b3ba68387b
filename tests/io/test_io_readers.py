"""MIMIC-CXR-JPG (+ ImaGenome), plain folders, DICOM trees and ``load_records`` detection."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from dicom_files import make_dicom, write_dicom
from iofiles import full_boxes, scene_graph
from PIL import Image

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.io.datasets import detect_layout, load_records
from chextriev.io.folder import read_folder
from chextriev.io.mimic import image_relpath, read_mimic
from chextriev.vocab import IMAGENOME_FINDINGS, REGIONS

IMAGES = [  # dicom_id, subject, study, split, view
    ("d1", "10000032", "50414267", "train", "PA"),
    ("d2", "10000032", "53189527", "validate", "AP"),
    ("d3", "11000011", "51000001", "test", "LATERAL"),
]


def _mimic(root, *, gz=False, graphs=True):
    for dicom_id, subject, study, _, _ in IMAGES:
        path = root / image_relpath(subject, study, dicom_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (48, 32), 100).save(path, format="JPEG")
    opener, suffix = (gzip.open, ".gz") if gz else (open, "")
    with opener(root / f"mimic-cxr-2.0.0-split.csv{suffix}", "wt") as fh:
        fh.write("dicom_id,study_id,subject_id,split\n")
        fh.writelines(f"{d},{st},{su},{sp}\n" for d, su, st, sp, _ in IMAGES)
        fh.write("d9,59999999,19999999,train\n")  # listed, no file
    with opener(root / f"mimic-cxr-2.0.0-metadata.csv{suffix}", "wt") as fh:
        fh.write(
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime\n"
        )
        fh.writelines(
            f"{d},{su},{st},CHEST (PA AND LAT),{v},32,48,21800506,213014.531\n"
            for d, su, st, _, v in IMAGES
        )
    if graphs:
        sg = root / "silver_dataset" / "scene_graph"
        sg.mkdir(parents=True)
        boxes = full_boxes()
        del boxes["trachea"]
        attrs = {
            "right costophrenic angle": [
                ["anatomicalfinding|yes|pleural effusion"],
                ["anatomicalfinding|no|pleural effusion"],
            ]
        }
        (sg / "d1_SceneGraph.json").write_text(json.dumps(scene_graph("d1", boxes, attrs)))
        (sg / "d2_SceneGraph.json").write_text("not json")


def test_mimic_with_imagenome(tmp_path):
    _mimic(tmp_path, gz=True)
    errors = []
    recs = read_mimic(
        tmp_path,
        imagenome_dir=tmp_path / "silver_dataset" / "scene_graph",
        errors=errors,
        progress=False,
    )
    by_id = {r.image_id: r for r in recs}
    assert set(by_id) == {"d1", "d2", "d3"}  # d9 has no file
    d1 = by_id["d1"]
    assert (d1.patient_id, d1.study_id, d1.split, d1.view, d1.image_size) == (
        "10000032",
        "50414267",
        "train",
        "PA",
        (32, 48),
    )
    assert d1.source.name == "d1.jpg" and d1.source.parent.name == "s50414267"
    assert d1.labels[IMAGENOME_FINDINGS.index("pleural effusion")] == 1 and d1.labels.sum() == 1
    assert d1.region_labels[REGIONS.index("right costophrenic angle"), 1] == 1
    assert not d1.box_mask[REGIONS.index("trachea")] and d1.box_mask.sum() == 17
    assert (
        by_id["d2"].labels is None and len(errors) == 1 and "d2_SceneGraph.json" in str(errors[0])
    )
    assert by_id["d3"].labels is None and by_id["d3"].split == "test"
    assert d1.meta["StudyDate"] == "21800506"


def test_mimic_detected_by_load_records(tmp_path):
    _mimic(tmp_path)
    assert detect_layout(tmp_path) == "mimic"
    recs = load_records(tmp_path, progress=False)  # scene graphs found in silver_dataset/
    assert {r.image_id for r in recs if r.labels is not None} == {"d1"}
    assert len(read_mimic(tmp_path, require_files=False, progress=False)) == 4


def test_mimic_without_split_csv_walks_the_tree(tmp_path):
    _mimic(tmp_path, graphs=False)
    (tmp_path / "mimic-cxr-2.0.0-split.csv").unlink()
    recs = load_records(tmp_path, progress=False)
    assert sorted((r.image_id, r.patient_id, r.study_id) for r in recs) == sorted(
        (d, su, st) for d, su, st, _, _ in IMAGES
    )
    assert all(r.split is None for r in recs)


def _folder(root):
    (root / "a").mkdir()
    Image.new("L", (16, 16), 10).save(root / "a" / "x.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "y.jpg")
    write_dicom(root / "a" / "IM0001", make_dicom(np.arange(16, dtype=np.uint16).reshape(4, 4)))
    (root / "notes.png").write_text("not an image")  # skipped: content is not an image
    (root / "readme.txt").write_text("hello")


def test_plain_folder_and_dicom_tree(tmp_path):
    _folder(tmp_path)
    recs = {r.meta["format"]: r for r in read_folder(tmp_path, progress=False)}
    assert set(recs) == {"png", "jpeg", "dicom"}
    assert recs["png"].image_id == "a/x" and recs["png"].labels is None
    dcm = recs["dicom"]
    assert dcm.patient_id == "PAT001" and dcm.view == "PA" and dcm.image_size == (4, 4)
    assert (
        dcm.image_id == dcm.meta["sop_instance_uid"] and dcm.study_id == dcm.meta["study_instance_uid"]
    )
    tree = load_records(tmp_path, layout="dicom", progress=False)
    assert [r.meta["format"] for r in tree] == ["dicom"]


def test_folder_manifest_names_and_columns(tmp_path):
    _folder(tmp_path)
    (tmp_path / "manifest.csv").write_text(
        "path,patient_id,study_id,view,labels,split\n"
        "a/x.png,P1,S1,PA,pneumonia|Pleural Effusion,train\n"
        "y.jpg,P2,S2,AP,No Finding,test\n"
    )
    recs = {r.image_id: r for r in load_records(tmp_path, progress=False)}
    assert set(recs) == {"a/x", "y"}
    x = recs["a/x"]
    assert (x.patient_id, x.study_id, x.view, x.split) == ("P1", "S1", "PA", "train")
    assert {IMAGENOME_FINDINGS[i] for i in np.flatnonzero(x.labels)} == {
        "pneumonia",
        "pleural effusion",
    }
    assert recs["y"].is_normal
    cols = tmp_path / "other.csv"
    cols.write_text("file,Atelectasis,Cardiomegaly\na/x.png,1,0\n")
    (r,) = load_records(cols, ["Atelectasis", "Cardiomegaly"], progress=False)
    np.testing.assert_array_equal(r.labels, [1, 0])
    assert len(read_folder(tmp_path, manifest=cols, include_unlisted=True, progress=False)) == 3
    (tmp_path / "manifest.csv").write_text("path,labels\na/x.png,broken bone\n")
    with pytest.raises(UnknownNameError, match="pneumonia"):
        load_records(tmp_path, progress=False)
    (tmp_path / "manifest.csv").write_text("path,labels\nmissing.png,\n")
    with pytest.raises(DataFormatError, match="missing.png"):
        load_records(tmp_path, progress=False)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DataFormatError, match="no PNG, JPEG or DICOM images"):
        load_records(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="does not exist"):
        load_records(tmp_path / "nope")
    with pytest.raises(UnknownNameError, match="folder"):
        load_records(tmp_path, layout="zip")


def test_synthetic_archive_layout_is_detected(tmp_path):
    (tmp_path / "scene_graph").mkdir()
    (tmp_path / "manifest.csv").write_text("image_id,path\n")
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\n")
    assert detect_layout(tmp_path) == "synthetic"  # wins over the MIMIC CSVs it also has
