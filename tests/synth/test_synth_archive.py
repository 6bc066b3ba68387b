"""Layout, CSVs, records, split and the agreement of boxes, labels and lesion masks."""

from __future__ import annotations

import csv
import json

import numpy as np

from chextriev.io.synthetic import read_archive
from chextriev.synth.archive import load_lesions
from chextriev.synth.writer import MANIFEST_FIELDS, METADATA_CSV, SPLIT_CSV
from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS, REGIONS


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_layout_and_csvs(tiny_archive):
    manifest = _rows(tiny_archive / "manifest.csv")
    assert tuple(manifest[0].keys()) == MANIFEST_FIELDS
    split = {r["dicom_id"]: r for r in _rows(tiny_archive / SPLIT_CSV)}
    meta = {r["dicom_id"]: r for r in _rows(tiny_archive / METADATA_CSV)}
    assert len(manifest) >= 6 and set(split) == set(meta) == {r["image_id"] for r in manifest}
    for row in manifest:
        path = tiny_archive / row["path"]
        parts = path.relative_to(tiny_archive).parts
        assert parts[0] == "files" and parts[1] == "p" + row["patient_id"][:2]
        assert parts[2] == "p" + row["patient_id"] and parts[3] == "s" + row["study_id"]
        assert path.exists() and path.suffix == (".dcm" if row["format"] == "dicom" else ".png")
        assert (tiny_archive / "scene_graph" / f"{row['image_id']}_SceneGraph.json").exists()
        assert (tiny_archive / "truth" / f"{row['image_id']}.npz").exists()
        assert split[row["image_id"]]["split"] == row["split"] in {"train", "validate", "test"}
        assert meta[row["image_id"]]["ViewPosition"] == row["view"] in {"PA", "AP"}
        assert int(meta[row["image_id"]]["Rows"]) == 128


def test_records_match_manifest(tiny_archive):
    records = read_archive(tiny_archive)
    manifest = {r["image_id"]: r for r in _rows(tiny_archive / "manifest.csv")}
    assert len(records) == len(manifest)
    for rec in records:
        row = manifest[rec.image_id]
        assert rec.class_names == IMAGENOME_FINDINGS
        assert rec.labels.shape == (9,) and rec.region_labels.shape == (NUM_REGIONS, 9)
        assert rec.boxes.shape == (NUM_REGIONS, 4)
        assert [int(row[f]) for f in IMAGENOME_FINDINGS] == rec.labels.astype(int).tolist()
        assert rec.meta["format"] == row["format"] and rec.split == row["split"]
        assert set(rec.meta) >= {"format", "study_date", "sex", "age"}
        present = rec.box_mask
        assert present.sum() >= NUM_REGIONS - 1
        b = rec.boxes[present]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_lesion_masks_lie_in_labelled_regions(tiny_archive):
    records = read_archive(tiny_archive)
    seen = 0
    for rec in records:
        lesions = load_lesions(tiny_archive, rec.image_id)
        if rec.is_normal:
            assert lesions == []
            continue
        assert lesions, f"{rec.image_id} has labels but no lesion"
        for lesion in lesions:
            f = IMAGENOME_FINDINGS.index(lesion.finding)
            assert rec.labels[f] == 1
            union = np.zeros((128, 128), dtype=bool)
            for r in np.flatnonzero(rec.region_labels[:, f]):
                x1, y1, x2, y2 = rec.boxes[r].astype(int)
                union[y1:y2, x1:x2] = True
            assert lesion.mask.shape == (128, 128) and lesion.mask.any()
            assert not (lesion.mask & ~union).any(), f"{lesion.finding} of {rec.image_id} leaves its regions"
            rows, cols = np.nonzero(lesion.mask)
            assert lesion.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            seen += 1
        found = {lesion.finding for lesion in lesions}
        assert found == {IMAGENOME_FINDINGS[k] for k in np.flatnonzero(rec.labels)}
    assert seen > 0


def test_scene_graph_format(tiny_archive):
    rec = read_archive(tiny_archive)[0]
    graph = json.loads((tiny_archive / "scene_graph" / f"{rec.image_id}_SceneGraph.json").read_text())
    assert graph["image_id"] == rec.image_id and graph["viewpoint"] == rec.view
    assert str(graph["patient_id"]) == rec.patient_id and str(graph["study_id"]) == rec.study_id
    for obj in graph["objects"]:
        assert obj["bbox_name"] in REGIONS
        for k in ("x1", "y1", "x2", "y2"):
            assert abs(obj[k] - obj[f"original_{k}"] * 224 / 128) < 0.01
    for attr in graph["attributes"]:
        assert len(attr["attributes"]) == len(attr["phrases"])
        for group in attr["attributes"]:
            for text in group:
                category, polarity, _ = text.split("|")
                assert polarity in ("yes", "no") and category


def test_any_yes_wins_over_a_later_no(tmp_path, archive_factory):
    archive = archive_factory(tmp_path / "b", seed=11, patients=12, normal_share=0.0, dicom_share=0.0)
    later_no = 0
    for rec in read_archive(archive):
        graph = json.loads((archive / "scene_graph" / f"{rec.image_id}_SceneGraph.json").read_text())
        for attr in graph["attributes"]:
            r = REGIONS.index(attr["bbox_name"])
            flat = [t for group in attr["attributes"] for t in group]
            for f, name in enumerate(IMAGENOME_FINDINGS):
                if f"anatomicalfinding|no|{name}" in flat and any(t.endswith(f"|yes|{name}") for t in flat):
                    later_no += 1
                    assert rec.region_labels[r, f] == 1
    assert later_no > 0


def test_split_is_patient_disjoint(tiny_archive):
    records = read_archive(tiny_archive)
    by_split: dict[str, set[str]] = {}
    for rec in records:
        by_split.setdefault(rec.split, set()).add(rec.patient_id)
    assert set(by_split) == {"train", "validate", "test"}
    names = list(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not by_split[a] & by_split[b]
