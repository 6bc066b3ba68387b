"""MIMIC-CXR-JPG layout, optionally with Chest ImaGenome scene graphs -> records.

Layout::

    ROOT/files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg   (.png/.dcm too)
    ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id,study_id,subject_id,split
    ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id,...,ViewPosition,Rows,Columns,StudyDate,...

The split CSV lists the images (its ``split`` is train / validate / test); without it the
``files/`` tree is walked. Labels, region labels and region boxes come from the scene graph
``<dicom_id>_SceneGraph.json`` in ``imagenome_dir`` when given; images without one have
``labels=None`` (unknown, not normal).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chextriev.errors import DataFormatError
from chextriev.io.imagenome import (
    SCENE_GRAPH_SUFFIX,
    image_id_from_filename,
    read_scene_graph,
    resolve_class_names,
)
from chextriev.io.tables import cell, find_table, int_or_none, read_csv
from chextriev.records import Record

log = logging.getLogger(__name__)

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")  # preference order when several exist
#: metadata columns kept in ``Record.meta`` when present
META_COLUMNS = (
    "StudyDate",
    "StudyTime",
    "PerformedProcedureStepDescription",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
    "ProcedureCodeSequence_CodeMeaning",
)


def image_relpath(subject_id: str, study_id: str, dicom_id: str, suffix: str = ".jpg") -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` for the MIMIC-CXR-JPG layout."""
    subject = subject_id.lstrip("p")
    study = study_id.lstrip("s")
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}{suffix}"


def index_files(files_dir: Path) -> dict[str, Path]:
    """``{dicom_id: path}`` for every image under ``files_dir`` (one walk, no decoding)."""
    found: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    for dirpath, _, filenames in os.walk(files_dir):
        for fn in filenames:
            stem, suffix = os.path.splitext(fn)
            suffix = suffix.lower()
            if suffix not in rank:
                continue
            old = found.get(stem)
            if old is None or rank[suffix] < rank[old.suffix.lower()]:
                found[stem] = Path(dirpath) / fn
    return found


def is_mimic_layout(root: Path) -> bool:
    """True when ``root`` has the MIMIC split CSV, or a ``files/p??/p*/s*`` tree."""
    root = Path(root)
    if find_table(root, SPLIT_CSV, depth=0) is not None:
        return True
    files = root / "files"
    return files.is_dir() and any(files.glob("p[0-9][0-9]/p*/s*"))


def _rows_from_tree(root: Path, files: dict[str, Path]) -> list[dict[str, str]]:
    rows = []
    for dicom_id, path in sorted(files.items()):
        parts = path.relative_to(root).parts
        if len(parts) < 5 or not parts[2].startswith("p") or not parts[3].startswith("s"):
            log.debug("%s: not in the files/pXX/p<subject>/s<study>/ layout; skipped", path)
            continue
        rows.append({"dicom_id": dicom_id, "subject_id": parts[2][1:], "study_id": parts[3][1:]})
    return rows


def read_mimic(
    root: str | Path,
    class_list: str | Sequence[str] = "imagenome",
    *,
    imagenome_dir: str | Path | None = None,
    require_files: bool = True,
    errors: list[DataFormatError] | None = None,
    progress: bool = True,
) -> list[Record]:
    """Read a MIMIC-CXR-JPG folder into records.

    Args:
        root: the folder holding ``files/`` and the CSVs.
        class_list: class-list name or finding names (``C``).
        imagenome_dir: a folder of ``*_SceneGraph.json`` (searched recursively).
        require_files: skip images whose file is not under ``files/`` (else keep them with the
            expected ``.jpg`` path).
        errors: collects the :class:`DataFormatError` of each bad scene graph (else warnings).
        progress: show a tqdm bar.

    Returns:
        records with ``split`` from the split CSV, ``view``/``image_size`` from the metadata CSV,
        and ``labels (C,)``, ``region_labels (18, C)``, ``boxes (18, 4)`` from scene graphs.
    """
    root = Path(root)
    names = resolve_class_names(class_list)
    files = index_files(root / "files") if (root / "files").is_dir() else {}
    split_path = find_table(root, SPLIT_CSV, depth=0)
    if split_path is not None:
        split_rows = read_csv(split_path, required=("dicom_id", "study_id", "subject_id")).to_dict(
            "records"
        )
    else:
        split_rows = _rows_from_tree(root, files)
    if not split_rows:
        raise DataFormatError(f"{root}: no MIMIC-CXR images (no split CSV rows, no files/ images)")

    metadata: dict[str, dict[str, Any]] = {}
    meta_path = find_table(root, METADATA_CSV, depth=0)
    if meta_path is not None:
        for row in read_csv(meta_path, required=("dicom_id",)).to_dict("records"):
            metadata[row["dicom_id"]] = row

    graphs: dict[str, Path] = {}
    if imagenome_dir is not None:
        folder = Path(imagenome_dir)
        if not folder.is_dir():
            raise DataFormatError(f"ImaGenome scene-graph folder {folder} does not exist")
        graphs = {image_id_from_filename(p): p for p in folder.rglob(f"*{SCENE_GRAPH_SUFFIX}")}

    records: list[Record] = []
    missing_files = 0
    for row in tqdm(split_rows, desc="mimic", unit="img", disable=not progress, leave=False):
        dicom_id = cell(row["dicom_id"])
        subject, study = cell(row["subject_id"]), cell(row["study_id"])
        if dicom_id is None or subject is None or study is None:
            raise DataFormatError(f"{split_path}: a row lacks dicom_id/subject_id/study_id: {row}")
        path = files.get(dicom_id)
        if path is None:
            if require_files:
                missing_files += 1
                continue
            path = root / image_relpath(subject, study, dicom_id)
        md = metadata.get(dicom_id, {})
        rows_, cols_ = int_or_none(md.get("Rows")), int_or_none(md.get("Columns"))
        meta: dict[str, Any] = {k: cell(md[k]) for k in META_COLUMNS if cell(md.get(k)) is not None}
        meta["dataset"] = "mimic-cxr-jpg"
        rec = Record(
            source=path,
            image_id=dicom_id,
            patient_id=subject,
            study_id=study,
            view=cell(md.get("ViewPosition")),
            class_names=names,
            image_size=(rows_, cols_) if rows_ and cols_ else None,
            origin=f"mimic:{split_path or root}",
            split=cell(row.get("split")),
            meta=meta,
        )
        graph_path = graphs.get(dicom_id)
        if graph_path is not None:
            try:
                graph = read_scene_graph(graph_path, names)
            except DataFormatError as exc:
                if errors is not None:
                    errors.append(exc)
                else:
                    log.warning("no labels for %s: %s", dicom_id, exc)
            else:
                rec.labels, rec.region_labels, rec.boxes = (
                    graph.labels,
                    graph.region_labels,
                    graph.boxes,
                )
                rec.view = rec.view or graph.view
                rec.image_size = rec.image_size or graph.image_size
                rec.meta["scene_graph"] = str(graph_path)
        records.append(rec)
    if missing_files:
        log.warning("%s: %d listed images have no file under files/; skipped", root, missing_files)
    if imagenome_dir is not None:
        labelled = sum(r.labels is not None for r in records)
        log.info("%s: %d of %d images have a scene graph", root, labelled, len(records))
    return records
