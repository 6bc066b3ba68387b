"""The benchmark class lists (``nih8``, ``chexpert5``) and the abnormality list (``abnormal``)
as every reader fills them: the abnormality labels of the real NIH rows, CheXpert's No Finding
column, ImaGenome scene graphs, the synthetic archive and a manifest; the subsets take the
columns they name, with the readers' label mapping unchanged."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
from chexpert_files import write_release
from iofiles import scene_graph

from chextriev.io.chexpert import LabelPolicy, abnormal_label, read_chexpert
from chextriev.io.datasets import load_records
from chextriev.io.folder import read_manifest
from chextriev.io.imagenome import parse_scene_graph
from chextriev.io.nih import read_nih
from chextriev.records import any_finding
from chextriev.vocab import (
    ABNORMAL_CLASSES,
    CHEXPERT5_OBSERVATIONS,
    CHEXPERT_OBSERVATIONS,
    CLASS_LISTS,
    NIH8_FINDINGS,
    NIH_FINDINGS,
    class_list,
    class_list_name,
)


def test_the_benchmark_subsets_and_the_abnormality_list():
    assert class_list("nih8") == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                  "Pneumonia", "Pneumothorax")
    assert set(NIH8_FINDINGS) <= set(NIH_FINDINGS)
    assert class_list("chexpert5") == ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    assert set(CHEXPERT5_OBSERVATIONS) <= set(CHEXPERT_OBSERVATIONS)
    assert class_list("abnormal") == ABNORMAL_CLASSES == ("abnormal",)
    assert {class_list_name(names) for names in CLASS_LISTS.values()} == set(CLASS_LISTS)
    assert class_list_name(("a", "b")) is None
    with pytest.raises(ValueError, match="valid: imagenome, nih, chexpert, nih8, chexpert5, abnormal"):
        class_list("nih14")


def _nih_rows(sample) -> dict[str, list[str]]:
    """``{image stem: findings}`` of the sample's images, read from the official label file."""
    on_disk = {p.name for p in (sample / "images").iterdir()}
    with gzip.open(sample / "metadata" / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        return {row[0][:-4]: row[1].split("|") for row in rows if row[0] in on_disk}


def test_abnormality_labels_of_the_real_nih_rows(nih_sample):
    rows = _nih_rows(nih_sample)
    records = read_nih(nih_sample, "abnormal", progress=False)
    assert len(records) == len(rows) == 621
    for record in records:
        assert record.class_names == ("abnormal",)
        assert record.labels.tolist() == [0.0 if rows[record.image_id] == ["No Finding"] else 1.0], record.image_id
    normal = sum(r.labels[0] == 0 for r in records)
    assert normal == 100  # the sample's README: No Finding 100
    # the 14-finding reading agrees: an image is abnormal exactly when it has a finding
    full = {r.image_id: r.labels for r in read_nih(nih_sample, "nih", progress=False)}
    assert all(bool(r.labels[0]) == bool(full[r.image_id].any()) for r in records)


def test_nih8_takes_its_columns_of_the_real_rows(nih_sample):
    full = {r.image_id: r for r in read_nih(nih_sample, "nih", progress=False)}
    subset = read_nih(nih_sample, "nih8", progress=False)
    for record in subset:
        assert record.class_names == NIH8_FINDINGS
        assert record.labels.tolist() == full[record.image_id].labels[:8].tolist()
        other = [f for f in full[record.image_id].meta["findings"] if f not in NIH8_FINDINGS]
        assert record.meta.get("unmapped_findings", []) == other  # e.g. Emphysema: listed, not a class
    assert sum(bool(r.meta["lesion_boxes"]) for r in subset) == 12  # the boxes are the 8 diseases'


def test_chexpert_abnormality_from_its_no_finding_column(tmp_path):
    write_release(tmp_path)
    full = {r.image_id: r for r in read_chexpert(tmp_path, "chexpert", progress=False)}
    records = read_chexpert(tmp_path, "abnormal", progress=False)
    assert {r.image_id for r in records} == set(full)
    for record in records:
        no_finding = record.meta["raw_labels"]["No Finding"]
        assert record.labels.tolist() == [0.0 if no_finding == 1.0 else 1.0]
        assert "unmapped_findings" not in record.meta
    assert sum(r.labels[0] == 0 for r in records) == 2  # patient00002 and the second valid row
    # an uncertain No Finding reads as the uncertainty policy says
    assert np.isnan(abnormal_label(-1.0, LabelPolicy("mask")))
    assert abnormal_label(-1.0, LabelPolicy("ones")) == 0.0 and abnormal_label(-1.0, LabelPolicy("zeros")) == 1.0
    assert abnormal_label(None, LabelPolicy(blank="mask")) == 1.0  # a blank No Finding: something was found


def test_chexpert5_takes_its_columns(tmp_path):
    write_release(tmp_path)
    full = {r.image_id: r for r in read_chexpert(tmp_path, "chexpert", progress=False)}
    columns = [CHEXPERT_OBSERVATIONS.index(name) for name in CHEXPERT5_OBSERVATIONS]
    records = read_chexpert(tmp_path, "chexpert5", progress=False)
    for record in records:
        assert record.class_names == CHEXPERT5_OBSERVATIONS
        np.testing.assert_array_equal(record.labels, full[record.image_id].labels[columns])  # NaN = masked
    first = next(r for r in records if r.image_id.endswith("patient00001/study1/view1_frontal"))
    assert first.meta["unmapped_findings"] == ["Support Devices"]


def test_imagenome_abnormality_is_any_finding_per_region():
    graph = scene_graph("d1", {"right lung": (1, 2, 30, 40), "left lung": (40, 2, 70, 40)},
                        {"right lung": [["anatomicalfinding|yes|lung opacity"], ["disease|no|pneumonia"]],
                         "left lung": [["disease|no|pneumonia"], ["nlp|yes|tortuous aorta"]]})
    parsed = parse_scene_graph(graph, "abnormal")
    assert parsed.class_names == ("abnormal",) and parsed.labels.tolist() == [1.0]
    assert parsed.region_labels.shape == (18, 1) and parsed.region_labels[:, 0].tolist() == [1.0] + [0.0] * 17
    normal = parse_scene_graph(scene_graph("d2", {"right lung": (1, 2, 30, 40)},
                                           {"right lung": [["disease|no|pneumonia"]]}), "abnormal")
    assert normal.labels.tolist() == [0.0]


def test_synthetic_archive_abnormality(tmp_path):
    from chextriev.synth.writer import SynthConfig, write_archive

    write_archive(SynthConfig(out=tmp_path / "a", patients=8, seed=2, size=64, dicom_share=0.0), progress=False)
    own = load_records(tmp_path / "a")
    records = load_records(tmp_path / "a", class_list="abnormal")
    assert [r.image_id for r in records] == [r.image_id for r in own]
    for mine, theirs in zip(records, own):
        assert mine.class_names == ("abnormal",)
        assert mine.labels.tolist() == [float(theirs.labels.any())]
        assert mine.region_labels[:, 0].tolist() == theirs.region_labels.max(axis=1).tolist()
    assert {r.labels[0] for r in records} == {0.0, 1.0}  # the archive has normal and abnormal images


def test_manifest_abnormality(tmp_path):
    (tmp_path / "labels.csv").write_text("path,labels\na.png,Effusion|Mass\nb.png,No Finding\nc.png,\n")
    rows = read_manifest(tmp_path / "labels.csv", "abnormal").rows
    assert [r.labels.tolist() for r in rows] == [[1.0], [0.0], [0.0]]
    (tmp_path / "columns.csv").write_text("path,Atelectasis,Effusion\na.png,0,1\nb.png,0,0\nc.png,,0\n")
    manifest = read_manifest(tmp_path / "columns.csv", "abnormal")
    assert manifest.class_names == ("abnormal",)
    assert [None if r.labels is None else r.labels.tolist() for r in manifest.rows] == [[1.0], [0.0], None]
    (tmp_path / "flag.csv").write_text("path,abnormal\na.png,1\nb.png,0\n")
    assert [r.labels.tolist() for r in read_manifest(tmp_path / "flag.csv", "abnormal").rows] == [[1.0], [0.0]]


def test_any_finding_keeps_unknown_labels_unknown():
    labels = np.array([[0, 1, np.nan], [0, 0, np.nan], [0, 0, 0]], np.float32)
    out = any_finding(labels)
    assert out[0] == 1.0 and np.isnan(out[1]) and out[2] == 0.0
