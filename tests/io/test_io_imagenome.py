"""Chest ImaGenome scene graphs: any-yes region labels, masked regions, bad files in a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from iofiles import full_boxes, scene_graph

from chextriev.errors import DataFormatError
from chextriev.io.imagenome import (
    iter_scene_graphs,
    parse_scene_graph,
    read_scene_graph,
    read_scene_graphs,
)
from chextriev.vocab import IMAGENOME_FINDINGS, REGIONS

LUNG = REGIONS.index("left lower lung zone")
CARDIAC = REGIONS.index("cardiac silhouette")


def _graph(image_id="d1", boxes=None, **extra):
    attributes = {
        # a later "no" must NOT erase the earlier "yes" (the published last-wins bug)
        "left lower lung zone": [
            ["anatomicalfinding|yes|lung opacity", "disease|yes|pneumonia"],
            ["anatomicalfinding|no|lung opacity", "nlp|no|pneumonia"],
        ],
        "cardiac silhouette": [
            ["anatomicalfinding|yes|enlarged cardiac silhouette"],
            ["anatomicalfinding|no|pleural effusion"],
        ],
        "right lung": [
            ["tubesandlines|yes|endotracheal tube", "disease|yes|not a class", "garbage"]
        ],
        "nonexistent region": [["anatomicalfinding|yes|atelectasis"]],
    }
    return scene_graph(image_id, full_boxes() if boxes is None else boxes, attributes, **extra)


def test_any_yes_wins_and_image_label_is_or():
    g = parse_scene_graph(_graph(), "imagenome")
    opacity, pneumonia = (
        IMAGENOME_FINDINGS.index("lung opacity"),
        IMAGENOME_FINDINGS.index("pneumonia"),
    )
    enlarged = IMAGENOME_FINDINGS.index("enlarged cardiac silhouette")
    assert g.region_labels.shape == (18, 9) and g.labels.shape == (9,)
    assert g.region_labels[LUNG, opacity] == 1 and g.region_labels[LUNG, pneumonia] == 1
    assert g.region_labels[CARDIAC, enlarged] == 1
    assert g.region_labels.sum() == 3  # unknown region / finding / malformed strings ignored
    expected = np.zeros(9, np.float32)
    expected[[opacity, pneumonia, enlarged]] = 1
    np.testing.assert_array_equal(g.labels, expected)
    assert (g.image_id, g.patient_id, g.study_id, g.view) == ("d1", "10000032", "50414267", "PA")
    assert g.image_size is None


def test_boxes_in_original_pixels_and_custom_class_list():
    g = parse_scene_graph(_graph(image_height=512, image_width=480), ["pneumonia", "atelectasis"])
    np.testing.assert_allclose(g.boxes[CARDIAC], full_boxes()["cardiac silhouette"])
    assert g.box_mask.all() and g.image_size == (512, 480)
    np.testing.assert_array_equal(g.labels, [1, 0])


def test_missing_regions_are_masked_not_dropped():
    boxes = full_boxes()
    del boxes["trachea"], boxes["left apical zone"]
    boxes["right hilar structures"] = (50, 50, 40, 60)  # degenerate: x2 < x1
    g = parse_scene_graph(_graph(boxes=boxes))
    missing = {REGIONS[i] for i in np.flatnonzero(~g.box_mask)}
    assert missing == {"trachea", "left apical zone", "right hilar structures"}
    assert np.isnan(g.boxes[REGIONS.index("trachea")]).all()
    assert g.labels.sum() == 3  # labels still there


def test_malformed_file_in_folder_does_not_stop_the_batch(tmp_path):
    (tmp_path / "a_SceneGraph.json").write_text(json.dumps(_graph("a")))
    (tmp_path / "b_SceneGraph.json").write_text('{"image_id": "b", "objects": [')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c_SceneGraph.json").write_text(json.dumps(_graph("c")))
    (tmp_path / "d_SceneGraph.json").write_text(json.dumps({"objects": []}))
    errors: list[DataFormatError] = []
    ids = [g.image_id for g in iter_scene_graphs(tmp_path, errors=errors)]
    assert ids == ["a", "c"]
    assert len(errors) == 2
    assert "b_SceneGraph.json" in str(errors[0]) and "malformed" in str(errors[0])
    assert "d_SceneGraph.json" in str(errors[1]) and "image_id" in str(errors[1])
    graphs, errs = read_scene_graphs(tmp_path)
    assert set(graphs) == {"a", "c"} and len(errs) == 2
    with pytest.raises(DataFormatError, match="b_SceneGraph.json"):
        read_scene_graph(tmp_path / "b_SceneGraph.json")


def test_not_an_object_and_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match="JSON object"):
        parse_scene_graph([1, 2])
    with pytest.raises(DataFormatError, match="does not exist"):
        list(iter_scene_graphs(tmp_path / "nope"))
