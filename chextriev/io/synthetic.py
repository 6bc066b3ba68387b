"""The synthetic archive (what ``chextriev synth`` writes) read back as records: labels, region
labels and boxes from its Chest ImaGenome scene graphs (:func:`chextriev.io.imagenome.parse_scene_graph`,
the one scene-graph parser), view, split, format and demographics from its CSVs.

This module defines the archive's file names; the generator (:mod:`chextriev.synth.writer`)
writes to them. Per-lesion truth (boxes and masks of what was drawn) is
:func:`chextriev.synth.archive.load_lesions`.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.io.imagenome import parse_scene_graph
from chextriev.records import Record
from chextriev.vocab import IMAGENOME_FINDINGS

log = logging.getLogger(__name__)

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
MANIFEST_CSV = "manifest.csv"


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise DataFormatError(f"{path} is missing: {path.parent} is not a complete synthetic archive "
                              "(generate one with `chextriev synth --out DIR --patients N`)")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
        parsed = parse_scene_graph(graph, IMAGENOME_FINDINGS)
        boxes = np.asarray(parsed.boxes, dtype=np.float32)
        region_labels = np.asarray(parsed.region_labels, dtype=np.float32)
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
