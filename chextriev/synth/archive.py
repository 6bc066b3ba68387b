"""Reading a synthetic archive back: records (labels, region labels, boxes, split, format)
and per-lesion truth.

Labels and boxes come from the Chest ImaGenome scene graphs, through
:func:`chextriev.io.imagenome.parse_scene_graph` when the readers package is installed, else
through the minimal parser here (same rule: any ``yes`` makes a region positive); view, split,
format and demographics come from the CSVs.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.records import Record
from chextriev.synth.truth import read_truth
from chextriev.synth.writer import MANIFEST_CSV, METADATA_CSV
from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS, REGIONS

log = logging.getLogger(__name__)


@dataclass
class Lesion:
    """One drawn lesion: finding (ImaGenome name), box (x1, y1, x2, y2) float pixels,
    mask (H, W) bool at the image's resolution."""

    finding: str
    box: tuple[float, float, float, float]
    mask: np.ndarray


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise DataFormatError(f"{path} is missing: {path.parent} is not a complete synthetic archive "
                              "(generate one with `chextriev synth --out DIR --patients N`)")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _parse_graph(graph: dict, class_names: tuple[str, ...]):
    """(boxes (18,4), region_labels (18,C)) of a scene graph."""
    try:
        from chextriev.io.imagenome import parse_scene_graph
    except ImportError:
        parse_scene_graph = None
    if parse_scene_graph is not None:
        parsed = parse_scene_graph(graph, class_names)
        return np.asarray(parsed.boxes, dtype=np.float32), np.asarray(parsed.region_labels, dtype=np.float32)
    boxes = np.full((NUM_REGIONS, 4), np.nan, dtype=np.float32)
    labels = np.zeros((NUM_REGIONS, len(class_names)), dtype=np.float32)
    for obj in graph.get("objects", []):
        if obj.get("bbox_name") in REGIONS:
            boxes[REGIONS.index(obj["bbox_name"])] = [obj[f"original_{k}"] for k in ("x1", "y1", "x2", "y2")]
    for attr in graph.get("attributes", []):
        if attr.get("bbox_name") not in REGIONS:
            continue
        r = REGIONS.index(attr["bbox_name"])
        for group in attr.get("attributes", []):
            for text in group:
                _, polarity, finding = text.split("|", 2)
                if polarity == "yes" and finding in class_names:
                    labels[r, class_names.index(finding)] = 1.0
    return boxes, labels


def read_archive(directory: str | Path) -> list[Record]:
    """All images of a synthetic archive as Records, in manifest order.

    Each record: source = path of the PNG or DCM, image_id = dicom id, class_names =
    IMAGENOME_FINDINGS, labels (9,), region_labels (18, 9), boxes (18, 4) original pixels
    (NaN = region absent from the scene graph), image_size (H, W), split, origin,
    meta {"format": "png8" | "png16" | "dicom", "study_date", "sex", "age"}.
    """
    root = Path(directory)
    manifest = _read_csv(root / MANIFEST_CSV)
    metadata = {row["dicom_id"]: row for row in _read_csv(root / METADATA_CSV)}
    records = []
    for row in manifest:
        image_id = row["image_id"]
        graph_path = root / "scene_graph" / f"{image_id}_SceneGraph.json"
        try:
            graph = json.loads(graph_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataFormatError(f"cannot read scene graph {graph_path}: {error}") from error
        boxes, region_labels = _parse_graph(graph, IMAGENOME_FINDINGS)
        meta_row = metadata.get(image_id)
        if meta_row is None:
            raise DataFormatError(f"{image_id} is in {MANIFEST_CSV} but not in {METADATA_CSV}")
        records.append(Record(
            source=root / row["path"],
            image_id=image_id,
            patient_id=row["patient_id"],
            study_id=row["study_id"],
            view=row["view"],
            class_names=IMAGENOME_FINDINGS,
            labels=region_labels.max(axis=0),
            region_labels=region_labels,
            boxes=boxes,
            image_size=(int(meta_row["Rows"]), int(meta_row["Columns"])),
            origin=f"synthetic:{root}",
            split=row["split"],
            meta={"format": row["format"], "study_date": meta_row["StudyDate"],
                  "sex": meta_row["PatientSex"], "age": int(meta_row["PatientAge"])},
        ))
    log.info("read %d synthetic records from %s", len(records), root)
    return records


def load_lesions(directory: str | Path, image_id: str) -> list[Lesion]:
    """The drawn lesions of one image (empty for a normal image)."""
    path = Path(directory) / "truth" / f"{image_id}.npz"
    if not path.exists():
        raise DataFormatError(f"no truth file for image {image_id!r} at {path}")
    truth = read_truth(path)
    return [Lesion(str(f), tuple(float(x) for x in box), mask)
            for f, box, mask in zip(truth["lesion_findings"], truth["lesion_boxes"], truth["lesion_masks"])]
