"""NIH ChestX-ray14 -> records.

Files (looked up in ``ROOT`` and its sub-folders, ``.gz`` or not):

* ``Data_Entry_2017*.csv``: ``Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
  Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]``
  (the bracketed headers span two columns each). ``Finding Labels`` is ``|``-separated;
  ``No Finding`` means all zeros.
* ``BBox_List_2017.csv``: ``Image Index,Finding Label,Bbox [x,y,w,h]`` with a 9-field header
  over 6-field rows (a known quirk), in pixels of the released 1024x1024 images, spelling
  ``Infiltrate`` for ``Infiltration``.
* ``train_val_list.txt`` / ``test_list.txt``: the official patient-disjoint split
  (``split`` = ``"train"`` / ``"test"``).
* images: ``*.png`` anywhere under ``ROOT`` (``images/`` or the release's ``images_0NN/images/``),
  8-bit ``L`` or ``RGBA`` (handled by :func:`chextriev.io.images.load_image`).

Lesion boxes are scaled to the image on disk (its size read from the PNG header, without
decoding): ``scale = actual / 1024``, and stored as ``record.meta["lesion_boxes"]``, a list of
``{"finding": name, "box": (x1, y1, x2, y2)}``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chextriev.errors import DataFormatError, ImageReadError
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.images import image_size
from chextriev.io.tables import cell, find_table, int_or_none
from chextriev.records import Record
from chextriev.vocab import NIH_FINDINGS, NIH_TO_IMAGENOME, is_abnormality

log = logging.getLogger(__name__)

DATA_ENTRY_GLOB = "Data_Entry_2017*.csv"
BBOX_CSV = "BBox_List_2017.csv"
#: the released images are 1024x1024; BBox_List coordinates are in that frame
NIH_RELEASE_SIZE = 1024
#: spellings in BBox_List_2017.csv that differ from the label file
FINDING_ALIASES = {"Infiltrate": "Infiltration"}
NO_FINDING = "No Finding"


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def canonical_finding(name: str) -> str:
    """``"Infiltrate"`` -> ``"Infiltration"``; other names unchanged (stripped)."""
    name = name.strip()
    return FINDING_ALIASES.get(name, name)


def read_bbox_list(path: str | Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """``BBox_List_2017.csv(.gz)`` -> ``{image index: [(finding, x1, y1, x2, y2), ...]}``.

    Coordinates stay in the 1024-pixel release frame. Only the first 6 fields of each row are
    read (the header announces 9).

    Raises:
        DataFormatError: a row with fewer than 6 fields or a non-numeric coordinate.
    """
    path = Path(path)
    boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or not header[0].strip().lower().startswith("image"):
            raise DataFormatError(f"{path}: expected an 'Image Index,...' header, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(f.strip() for f in row):
                continue
            if len(row) < 6:
                raise DataFormatError(f"{path}:{lineno}: expected 6 fields, got {len(row)}: {row}")
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: non-numeric box {row[2:6]}") from None
            boxes.setdefault(row[0].strip(), []).append(
                (canonical_finding(row[1]), x, y, x + w, y + h)
            )
    return boxes


def read_split_lists(root: Path) -> dict[str, str]:
    """``{image index: "train" | "test"}`` from ``train_val_list.txt`` / ``test_list.txt``."""
    split: dict[str, str] = {}
    for name, value in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        path = find_table(root, name)
        if path is None:
            continue
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    split[line.strip()] = value
    return split


def read_data_entry(path: Path) -> list[dict[str, Any]]:
    """Rows of ``Data_Entry_2017*.csv(.gz)`` as dicts with parsed fields.

    The bracketed headers (``OriginalImage[Width,Height]``) span two columns each, so columns
    are read by position.
    """
    rows = []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0].strip() != "Image Index" or "Finding Labels" not in header[1]:
            raise DataFormatError(
                f"{path}: expected header 'Image Index,Finding Labels,...', got {header}"
            )
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 7:
                raise DataFormatError(f"{path}:{lineno}: expected at least 7 fields, got {row}")
            width = int_or_none(row[7]) if len(row) > 8 else None
            height = int_or_none(row[8]) if len(row) > 8 else None
            spacing = None
            if len(row) > 10 and cell(row[9]) and cell(row[10]):
                try:
                    spacing = (float(row[9]), float(row[10]))
                except ValueError:
                    spacing = None
            rows.append(
                {
                    "image_index": row[0].strip(),
                    "findings": [f.strip() for f in row[1].split("|") if f.strip()],
                    "follow_up": int_or_none(row[2]),
                    "patient_id": cell(row[3]),
                    "age": int_or_none(row[4]),
                    "sex": cell(row[5]),
                    "view": cell(row[6]),
                    "original_size": (height, width) if width and height else None,
                    "pixel_spacing": spacing,
                }
            )
    return rows


def labels_for(findings: Sequence[str], names: tuple[str, ...]) -> tuple[list[float], list[str]]:
    """NIH finding names -> 0/1 over ``names`` (NIH names, or ImaGenome names through
    :data:`chextriev.vocab.NIH_TO_IMAGENOME`), and the findings that have no class.

    The abnormality list (``"abnormal"``) reads NIH's own flag: 0 for ``No Finding``, 1 for a
    row that names any finding."""
    if is_abnormality(names):
        return [float(any(canonical_finding(f) != NO_FINDING for f in findings))], []
    index = {n: i for i, n in enumerate(names)}
    to_imagenome = not any(f in index for f in NIH_FINDINGS)
    labels = [0.0] * len(names)
    unmapped = []
    for finding in findings:
        finding = canonical_finding(finding)
        if finding == NO_FINDING:
            continue
        target = NIH_TO_IMAGENOME.get(finding) if to_imagenome else finding
        if target in index:
            labels[index[target]] = 1.0
        else:
            unmapped.append(finding)
    return labels, unmapped


def _patient(value: str | None) -> str | None:
    """``"00042"`` -> ``"42"`` (the label file's numbers, without padding)."""
    return str(int(value)) if value and value.isdigit() else value


def index_pngs(root: Path) -> dict[str, Path]:
    """``{file name: path}`` of every ``*.png`` under ``root`` (one walk, no decoding)."""
    found: dict[str, Path] = {}
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            if fn.lower().endswith(".png"):
                found.setdefault(fn, Path(dirpath) / fn)
    return found


def is_nih_layout(root: Path) -> bool:
    """True when a ``Data_Entry_2017*.csv(.gz)`` is in ``root`` or its sub-folders."""
    return find_table(Path(root), DATA_ENTRY_GLOB) is not None


def read_nih(
    root: str | Path,
    class_list: str | Sequence[str] = "nih",
    *,
    only_existing: bool = True,
    progress: bool = True,
) -> list[Record]:
    """Read an NIH ChestX-ray14 folder into records.

    Args:
        root: folder holding the CSVs (or a ``metadata/`` sub-folder) and the PNGs.
        class_list: ``"nih"`` (14 findings), ``"nih8"`` (the 8 boxed ChestX-ray8 diseases) or
            another list; ImaGenome names are filled through
            :data:`~chextriev.vocab.NIH_TO_IMAGENOME` and findings without a counterpart are
            listed in ``meta["unmapped_findings"]``; ``"abnormal"``: 0 for ``No Finding``, else 1.
        only_existing: keep only the images present on disk (else all rows of the label file,
            with the path they would have under ``images/``).
        progress: show a tqdm bar.

    Returns:
        records with ``image_id`` = file stem, ``patient_id``, ``study_id`` = ``image_id`` (NIH
        has no study), ``view``, ``labels (C,)``, ``split`` from the official lists, and
        ``meta``: ``image_index``, ``findings``, ``follow_up``, ``age``, ``sex``,
        ``original_size (H, W)``, ``pixel_spacing``, ``lesion_boxes``.
    """
    root = Path(root)
    names = resolve_class_names(class_list)
    entry_path = find_table(root, DATA_ENTRY_GLOB)
    if entry_path is None:
        raise DataFormatError(f"{root}: no Data_Entry_2017*.csv(.gz) found (NIH ChestX-ray14)")
    entries = read_data_entry(entry_path)
    bbox_path = find_table(root, BBOX_CSV)
    bboxes = read_bbox_list(bbox_path) if bbox_path is not None else {}
    split = read_split_lists(root)
    pngs = index_pngs(root)
    images_dir = root / "images"

    records: list[Record] = []
    for entry in tqdm(entries, desc="nih", unit="img", disable=not progress, leave=False):
        index = entry["image_index"]
        path = pngs.get(index)
        if path is None:
            if only_existing:
                continue
            path = images_dir / index
        labels, unmapped = labels_for(entry["findings"], names)
        meta: dict[str, Any] = {
            "dataset": "nih-chestxray14",
            "image_index": index,
            "findings": [canonical_finding(f) for f in entry["findings"] if f != NO_FINDING],
            "follow_up": entry["follow_up"],
            "age": entry["age"],
            "sex": entry["sex"],
            "original_size": entry["original_size"],
            "pixel_spacing": entry["pixel_spacing"],
            "lesion_boxes": [],
        }
        if unmapped:
            meta["unmapped_findings"] = unmapped
        size = None
        if index in bboxes and path.is_file():
            try:
                size = image_size(path)
            except ImageReadError as exc:
                log.warning("cannot scale the boxes of %s: %s", index, exc)
            if size is not None:
                sy, sx = size[0] / NIH_RELEASE_SIZE, size[1] / NIH_RELEASE_SIZE
                meta["lesion_boxes"] = [
                    {"finding": f, "box": (x1 * sx, y1 * sy, x2 * sx, y2 * sy)}
                    for f, x1, y1, x2, y2 in bboxes[index]
                ]
        stem = Path(index).stem
        records.append(
            Record(
                source=path,
                image_id=stem,
                patient_id=_patient(entry["patient_id"]),
                study_id=stem,
                view=entry["view"],
                class_names=names,
                labels=labels,
                image_size=size,
                origin=f"nih:{entry_path}",
                split=split.get(index),
                meta=meta,
            )
        )
    if not records:
        raise DataFormatError(
            f"{root}: {entry_path.name} lists {len(entries)} images but none is on disk "
            "(pass only_existing=False to read the labels alone)"
        )
    log.info(
        "%s: %d NIH images (%d with boxes)",
        root,
        len(records),
        sum(bool(r.meta["lesion_boxes"]) for r in records),
    )
    return records
