"""CheXpert: small files written in exactly the release formats (train.csv / valid.csv with the
14 observations and blank / -1.0 cells, JPEGs under CheXpert-v1.0/, HAM's BBoxes.json with its
name quirks), the uncertainty policies, the official validation split, and box metrics on
those boxes."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from chexpert_files import BOXES, HEADER, OBS, SIZE, TRAIN_ROWS, VALID_ROWS, write_release
from PIL import Image

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.io.chexpert import LabelPolicy, read_chexpert
from chextriev.io.chexpert_boxes import image_key, parse_box_annotations, read_box_annotations
from chextriev.io.datasets import detect_layout, load_records
from chextriev.vocab import CHEXPERT_OBSERVATIONS, IMAGENOME_FINDINGS, class_list


@pytest.fixture
def release(tmp_path):
    write_release(tmp_path)
    return tmp_path


def by_id(records):
    return {r.image_id: r for r in records}


def test_release_layout_ids_views_and_metadata(release):
    report: dict = {}
    recs = by_id(read_chexpert(release, progress=False, report=report))
    assert len(recs) == 1 + 1 + 36 + 2  # patient00003 has no file, the lateral view is skipped
    assert report["skipped_lateral"] == 1 and report["missing_files"] == 1
    r = recs["train/patient00001/study1/view1_frontal"]
    assert r.patient_id == "patient00001" and r.study_id == "patient00001/study1"
    assert r.view == "AP" and r.meta["sex"] == "Female" and r.meta["age"] == 68
    assert r.source == release / "CheXpert-v1.0" / "train/patient00001/study1/view1_frontal.jpg"
    assert r.meta["path"] == "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"
    assert r.class_names == CHEXPERT_OBSERVATIONS and r.split in ("train", "test")
    assert r.meta["raw_labels"]["Edema"] == -1.0 and r.meta["raw_labels"]["Lung Lesion"] is None
    assert recs["train/patient00002/study1/view1_frontal"].view == "PA"
    with_laterals = by_id(read_chexpert(release, frontal_only=False, progress=False))
    assert with_laterals["train/patient00001/study1/view2_lateral"].view == "LATERAL"
    assert len(read_chexpert(release, only_existing=False, frontal_only=False, boxes=None, progress=False)) == 42


def test_uncertainty_and_blank_policies(release):
    key = "train/patient00001/study1/view1_frontal"

    def labels(**policy):
        return by_id(read_chexpert(release, boxes=None, progress=False, **policy))[key].labels

    masked = labels()  # default: uncertain masked, blank 0
    assert masked[OBS["Cardiomegaly"]] == 1 and masked[OBS["Support Devices"]] == 1
    assert math.isnan(masked[OBS["Edema"]]) and masked[OBS["Pleural Effusion"]] == 0
    assert masked[OBS["Lung Lesion"]] == 0 and np.isnan(masked).sum() == 1
    assert labels(uncertainty="ones")[OBS["Edema"]] == 1
    assert labels(uncertainty="zeros")[OBS["Edema"]] == 0
    blank_masked = labels(uncertainty="zeros", blank="mask")
    assert math.isnan(blank_masked[OBS["Lung Lesion"]]) and blank_masked[OBS["Pleural Effusion"]] == 0
    assert np.isnan(blank_masked).sum() == 14 - 4
    record = by_id(read_chexpert(release, boxes=None, uncertainty="ones", progress=False))[key]
    assert "U-Ones" in record.meta["label_policy"] and "blank) -> 0" in record.meta["label_policy"]
    with pytest.raises(UnknownNameError, match="ones, zeros, mask"):
        read_chexpert(release, uncertainty="u-multiclass")
    with pytest.raises(UnknownNameError, match="zeros, mask"):
        LabelPolicy(blank="ones")


def test_valid_csv_is_the_validation_split_and_patients_are_disjoint(tmp_path):
    write_release(tmp_path)
    recs = read_chexpert(tmp_path, boxes=None, progress=False)
    splits = {r.patient_id: set() for r in recs}
    for r in recs:
        splits[r.patient_id].add(r.split)
    assert all(len(s) == 1 for s in splits.values())  # patient-disjoint
    assert {r.patient_id for r in recs if r.split == "validate"} == {"patient64541", "patient64542"}
    test = {r.patient_id for r in recs if r.split == "test"}
    assert 0 < len(test) < 15 and not test & {"patient64541", "patient64542"}
    assert test != {r.patient_id for r in read_chexpert(tmp_path, boxes=None, seed=1, progress=False)
                    if r.split == "test"}
    assert not [r for r in read_chexpert(tmp_path, boxes=None, test_fraction=0, progress=False) if r.split == "test"]


def test_test_csv_is_the_test_split(tmp_path):
    write_release(tmp_path, test_csv=True)
    recs = read_chexpert(tmp_path, boxes=None, progress=False)
    assert [r.patient_id for r in recs if r.split == "test"] == ["patient70001"]


def test_root_or_release_folder_and_layout_detection(release):
    a = read_chexpert(release, boxes=None, progress=False)
    b = read_chexpert(release / "CheXpert-v1.0", boxes=None, progress=False)
    assert [(r.image_id, str(r.source)) for r in a] == [(r.image_id, str(r.source)) for r in b]
    assert detect_layout(release) == "chexpert" and detect_layout(release / "CheXpert-v1.0") == "chexpert"
    recs = load_records(release, "chexpert", uncertainty="ones", progress=False)
    assert len(recs) == len(a) and recs[0].meta["dataset"] == "chexpert"


def test_other_class_lists_through_the_vocabulary(release):
    recs = by_id(read_chexpert(release, "imagenome", boxes=None, progress=False))
    r = recs["train/patient00001/study1/view1_frontal"]
    assert r.class_names == IMAGENOME_FINDINGS
    assert r.labels[IMAGENOME_FINDINGS.index("enlarged cardiac silhouette")] == 1
    assert math.isnan(r.labels[IMAGENOME_FINDINGS.index("pulmonary edema/hazy opacity")])  # uncertain: masked
    assert r.labels[IMAGENOME_FINDINGS.index("fluid overload/heart failure")] == 0  # no CheXpert counterpart
    assert r.meta["unmapped_findings"] == ["Support Devices"]
    nih = by_id(read_chexpert(release, "nih", boxes=None, blank="mask", progress=False))
    n = nih["train/patient00001/study1/view1_frontal"]
    names = class_list("nih")
    assert n.labels[names.index("Effusion")] == 0 and n.labels[names.index("Cardiomegaly")] == 1
    assert math.isnan(n.labels[names.index("Mass")])  # not in CheXpert: blank policy (masked)


def test_bad_files_raise_with_the_place(tmp_path):
    release = write_release(tmp_path, boxes=False)
    text = (release / "train.csv").read_text().replace("Male,45,Frontal,PA,1.0", "Male,45,Frontal,PA,2.0")
    (release / "train.csv").write_text(text)
    with pytest.raises(DataFormatError, match=r"train.csv:4 column 'No Finding'.*'2.0'"):
        read_chexpert(tmp_path, progress=False)
    (release / "train.csv").write_text(HEADER + "".join(TRAIN_ROWS) + VALID_ROWS[0].replace("valid/", "train/"))
    with pytest.raises(DataFormatError, match="patient64541 is also in train.csv"):
        read_chexpert(tmp_path, progress=False)
    with pytest.raises(DataFormatError, match="no CheXpert train.csv"):
        read_chexpert(tmp_path / "CheXpert-v1.0" / "train", progress=False)


def test_box_json_names_normalised_and_unmapped_reported(tmp_path, caplog):
    path = tmp_path / "BBoxes.json"
    path.write_text(json.dumps(BOXES))
    with caplog.at_level(logging.WARNING):
        ann = read_box_annotations(path)
    assert ann.renamed == {"edema": "Edema", "Pleural_Effusion": "Pleural Effusion",
                           "Enlarg_Cardiomediastinum": "Enlarged Cardiomediastinum",
                           "Enlarged_Cardiomediastinum": "Enlarged Cardiomediastinum"}
    assert ann.unmapped == {"Nodule": 1}
    assert "'Nodule' x1" in caplog.text and "kept apart" in caplog.text
    assert ann.unmapped_boxes["train/patient00002/study1/view1_frontal.jpg"] == [
        {"label": "Nodule", "box": (10.0, 10.0, 30.0, 30.0)}]
    assert [k for k, _, _ in ann.invalid] == ["train/patient00004/study1/view1_frontal.jpg"]
    assert ann.n_images == len(BOXES) and ann.n_boxes == 11
    assert ann.per_finding() == {"Cardiomegaly": 2, "Edema": 2, "Pleural Effusion": 2, "Fracture": 1,
                                 "Enlarged Cardiomediastinum": 2, "Pneumothorax": 1}
    assert ann.boxes["train/patient01086/study3/view1_frontal.jpg"] == []


def test_box_json_structure_errors():
    with pytest.raises(DataFormatError, match="JSON object"):
        parse_box_annotations([1, 2])
    with pytest.raises(DataFormatError, match="'a.jpg'"):
        parse_box_annotations({"a.jpg": [[1, 2, 3, 4]]})
    with pytest.raises(DataFormatError, match="list of"):
        parse_box_annotations({"a.jpg": {"Edema": {"box": 1}}})


def test_image_key_strips_the_release_folder():
    assert image_key("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg") == \
        "train/patient00001/study1/view1_frontal.jpg"
    assert image_key("CheXpert-v1.0-small/valid/p/s/v.jpg") == "valid/p/s/v.jpg"
    assert image_key("./train\\p\\s\\v.jpg") == "train/p/s/v.jpg"
    assert image_key("train/p/s/v.jpg") == "train/p/s/v.jpg"


def test_boxes_attached_like_nih_and_problems_reported(release, caplog):
    report: dict = {}
    with caplog.at_level(logging.WARNING):
        recs = by_id(read_chexpert(release, progress=False, report=report))
    r = recs["train/patient00001/study1/view1_frontal"]
    assert [b["finding"] for b in r.meta["lesion_boxes"]] == ["Cardiomegaly", "Edema", "Pleural Effusion",
                                                              "Pleural Effusion"]
    assert r.meta["lesion_boxes"][0]["box"] == (10.0, 40.0, 50.0, 90.0) and r.image_size == SIZE
    v = recs["valid/patient64541/study1/view1_frontal"]
    assert {b["finding"] for b in v.meta["lesion_boxes"]} == {"Enlarged Cardiomediastinum"}
    p2 = recs["train/patient00002/study1/view1_frontal"]
    assert p2.meta["unmapped_lesion_boxes"] == [{"label": "Nodule", "box": (10.0, 10.0, 30.0, 30.0)}]
    assert [b["finding"] for b in p2.meta["lesion_boxes"]] == ["Edema"]
    assert recs["valid/patient64542/study1/view1_frontal"].meta["lesion_boxes"] == []  # misfit: reported
    assert [m["image"] for m in report["box_images_misfit"]] == ["valid/patient64542/study1/view1_frontal.jpg"]
    assert "not the original size" in report["box_images_misfit"][0]["reason"]
    assert set(report["box_images_not_read"]) == {"train/patient00001/study1/view2_lateral.jpg",
                                                  "train/patient99999/study1/view1_frontal.jpg",
                                                  "train/patient01086/study3/view1_frontal.jpg"}
    assert report["box_names_unmapped"] == {"Nodule": 1} and len(report["boxes_invalid"]) == 1
    assert "not among the records read" in caplog.text and "not attached" in caplog.text


def test_box_metrics_run_on_chexpert_boxes(release):
    """metrics.localization_eval scores heatmaps against these boxes (CheXpert names mapped to
    the model's ImaGenome classes): a map bright inside the true boxes hits, one elsewhere misses."""
    from chextriev.localization import CamPipeline
    from metrics.localization_eval import evaluate_localization, lesion_box_truth

    recs = [r for r in read_chexpert(release, "imagenome", progress=False) if r.meta["lesion_boxes"]]
    assert len(recs) == 3

    def pipeline(flip: bool) -> CamPipeline:
        def features(images):
            return images.flip(-1) if flip else images  # (1, 1, S, S): the image is the feature map

        def head(feature_map):
            return feature_map.mean(dim=(2, 3)).expand(-1, len(IMAGENOME_FINDINGS)) * 10

        return CamPipeline(features, head, 64, IMAGENOME_FINDINGS, linear_weights=torch.ones(9, 1))

    hit = evaluate_localization(pipeline(False), recs, lesion_box_truth, method="cam", max_images=None)
    miss = evaluate_localization(pipeline(True), recs, lesion_box_truth, method="cam", max_images=None)
    cardio = hit["boxes"]["per_finding"]["Cardiomegaly"]
    assert cardio["n_cases"] == 1 and cardio["iou"][0.5] == 1.0  # the bright block is the box
    assert miss["boxes"]["per_finding"]["Cardiomegaly"]["iou"][0.5] == 0.0
    assert hit["unmapped_findings"] == ["Enlarged Cardiomediastinum"]  # no ImaGenome class: listed
    assert hit["boxes"]["n_cases"] == 4  # Cardiomegaly, Edema, Pleural Effusion on patient00001; Edema on 00002
    assert hit["pixels"] is None  # boxes only: no TIoU/TIoR unless the boxes serve as masks
    hit_px = evaluate_localization(pipeline(False), recs, lesion_box_truth, method="cam", max_images=None,
                                   box_masks=True)
    miss_px = evaluate_localization(pipeline(True), recs, lesion_box_truth, method="cam", max_images=None,
                                    box_masks=True)
    assert hit_px["pixels"]["truth"] == "boxes as masks" and hit_px["pixels"]["n_cases"] == 4
    assert hit_px["pixels"]["TIoU"][0.5] == 0.25  # the Cardiomegaly map is its box; the other three are elsewhere
    assert miss_px["pixels"]["TIoU"][0.1] == 0.0 and hit_px["boxes"] == hit["boxes"]


def test_box_mask_fills_the_box_clipped_to_the_image():
    from metrics.localization_eval import box_mask

    mask = box_mask(np.array([2.5, 1.0, 5.0, 3.2]), (6, 8))
    assert mask.shape == (6, 8) and mask.sum() == 3 * 3 and mask[1:4, 2:5].all()
    assert box_mask(np.array([-4, -4, 100, 2]), (6, 8)).sum() == 8 * 2
    assert not box_mask(np.array([9, 0, 12, 3]), (6, 8)).any()  # outside the image


def test_label_policy_options_are_refused_for_other_layouts(tmp_path):
    Image.new("L", (32, 32), 90).save(tmp_path / "a.png")
    with pytest.raises(DataFormatError, match="uncertainty applies to CheXpert data only"):
        load_records(tmp_path, uncertainty="ones")
