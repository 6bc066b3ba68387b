"""A plain folder (or a DICOM tree) of PNG / JPEG / DICOM images, with an optional manifest.

Images are found recursively and recognised by content (magic bytes), so DICOM files without
an extension are found too. DICOM files take ``patient_id``, ``study_id``, ``view`` and
``meta`` from their tags (read without pixels).

Manifest CSV (``manifest.csv`` / ``labels.csv`` in the folder, or given): one row per image with
a ``path`` column (also ``file``/``filename``/``image``; relative to the manifest's folder) and
optionally ``image_id``, ``patient_id``, ``study_id``, ``view``, ``split``, and labels either as
a ``labels``/``findings`` column of ``|``-separated finding names or one 0/1 column per class.
With a manifest, its rows are the records; ``include_unlisted=True`` adds the other images
(``labels=None``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from chextriev.errors import DataFormatError, ImageReadError, UnknownNameError
from chextriev.io.dicom import dicom_metadata
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.images import detect_format
from chextriev.io.tables import cell, read_csv
from chextriev.records import Record

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.csv", "labels.csv")
PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")
LABEL_COLUMNS = ("labels", "findings", "finding_labels")
#: files never considered as images (saves opening them)
SKIP_SUFFIXES = {
    ".csv",
    ".gz",
    ".json",
    ".txt",
    ".md",
    ".npz",
    ".npy",
    ".yaml",
    ".yml",
    ".py",
    ".html",
}


def find_images(root: str | Path) -> list[tuple[Path, str]]:
    """``[(path, format)]`` of every PNG / JPEG / DICOM file under ``root`` (sorted).

    Raises:
        DataFormatError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if fn.startswith(".") or path.suffix.lower() in SKIP_SUFFIXES:
                continue
            try:
                fmt = detect_format(path)
            except ImageReadError:
                continue
            if fmt is not None:
                found.append((path, fmt))
    return found


def _dicom_fields(path: Path) -> dict[str, Any]:
    try:
        tags = dicom_metadata(path)
    except ImageReadError as exc:
        log.warning("cannot read DICOM tags of %s: %s", path, exc)
        return {}
    return tags


def _labels_from_row(row: dict[str, Any], names: tuple[str, ...], where: str) -> list[float] | None:
    index = {n.lower(): i for i, n in enumerate(names)}
    for column in LABEL_COLUMNS:
        if column in row:
            text = cell(row[column])
            labels = [0.0] * len(names)
            for finding in (text or "").split("|"):
                finding = finding.strip()
                if not finding or finding.lower() in ("no finding", "normal", "none"):
                    continue
                if finding.lower() not in index:
                    raise UnknownNameError("finding", f"{finding} (in {where})", names)
                labels[index[finding.lower()]] = 1.0
            return labels
    lower = {str(k).lower(): k for k in row}
    if any(n.lower() in lower for n in names):
        labels = []
        for n in names:
            value = cell(row.get(lower.get(n.lower(), ""), None))
            try:
                labels.append(1.0 if value is not None and float(value) >= 0.5 else 0.0)
            except ValueError:
                raise DataFormatError(f"{where}: column {n!r} must be 0/1, got {value!r}") from None
        return labels
    return None


def find_manifest(root: Path) -> Path | None:
    """``manifest.csv`` or ``labels.csv`` directly in ``root``."""
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _record_for_file(path: Path, fmt: str, root: Path, names: tuple[str, ...]) -> Record:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    image_id = rel.with_suffix("").as_posix() if fmt != "dicom" or path.suffix else rel.as_posix()
    rec = Record(source=path, image_id=image_id, class_names=names, origin=f"folder:{root}")
    rec.meta["format"] = fmt
    if fmt == "dicom":
        tags = _dicom_fields(path)
        rec.meta.update({k: v for k, v in tags.items() if v is not None})
        rec.image_id = tags.get("SOPInstanceUID") or image_id
        rec.patient_id = tags.get("PatientID")
        rec.study_id = tags.get("StudyInstanceUID")
        rec.view = tags.get("ViewPosition")
        if tags.get("Rows") and tags.get("Columns"):
            rec.image_size = (int(tags["Rows"]), int(tags["Columns"]))
    return rec


def read_folder(
    root: str | Path,
    class_list: str | Sequence[str] = "imagenome",
    *,
    manifest: str | Path | None = None,
    include_unlisted: bool = False,
    dicom_only: bool = False,
    progress: bool = True,
) -> list[Record]:
    """Read a folder of PNG / JPEG / DICOM images into records.

    Args:
        root: the folder (searched recursively).
        class_list: class-list name or finding names (``C``), for manifest labels.
        manifest: a CSV (default: ``manifest.csv``/``labels.csv`` in ``root`` when present).
        include_unlisted: with a manifest, also keep images it does not list (``labels=None``).
        dicom_only: keep only DICOM files (a DICOM tree).
        progress: show a tqdm bar.

    Raises:
        DataFormatError: no image found, a manifest without a path column, or a manifest row
            naming a missing file.
    """
    root = Path(root)
    names = resolve_class_names(class_list)
    images = find_images(root)
    if dicom_only:
        images = [(p, f) for p, f in images if f == "dicom"]
    if not images:
        kind = "DICOM" if dicom_only else "PNG, JPEG or DICOM"
        raise DataFormatError(f"{root}: no {kind} images found (searched recursively)")
    formats = dict(images)
    manifest_path = Path(manifest) if manifest is not None else find_manifest(root)

    records: list[Record] = []
    listed: set[Path] = set()
    if manifest_path is not None:
        frame = read_csv(manifest_path)
        path_col = next((c for c in PATH_COLUMNS if c in frame.columns), None)
        if path_col is None:
            raise DataFormatError(
                f"{manifest_path}: needs a path column (one of {', '.join(PATH_COLUMNS)}); "
                f"found: {', '.join(frame.columns)}"
            )
        base = manifest_path.parent
        for lineno, row in enumerate(frame.to_dict("records"), start=2):
            where = f"{manifest_path}:{lineno}"
            rel = cell(row[path_col])
            if rel is None:
                raise DataFormatError(f"{where}: empty {path_col}")
            path = (base / rel).resolve()
            fmt = formats.get(path) or formats.get(base / rel)
            if fmt is None:
                fmt = detect_format(path) if path.is_file() else None
            if fmt is None:
                raise DataFormatError(f"{where}: {rel} is not an image file under {base}")
            rec = _record_for_file(base / rel, fmt, root, names)
            rec.origin = f"folder:{manifest_path}"
            rec.image_id = cell(row.get("image_id")) or rec.image_id
            rec.patient_id = cell(row.get("patient_id")) or rec.patient_id
            rec.study_id = cell(row.get("study_id")) or rec.study_id
            rec.view = cell(row.get("view")) or rec.view
            rec.split = cell(row.get("split"))
            labels = _labels_from_row(row, names, where)
            if labels is not None:
                rec.labels = np.asarray(labels, dtype=np.float32)
            records.append(rec)
            listed.add(path)
        if not include_unlisted:
            unlisted = sum(p.resolve() not in listed for p, _ in images)
            if unlisted:
                log.info("%s: %d images not in %s ignored", root, unlisted, manifest_path.name)
            return records
    for path, fmt in tqdm(images, desc="folder", unit="img", disable=not progress, leave=False):
        if path.resolve() in listed:
            continue
        records.append(_record_for_file(path, fmt, root, names))
    return records


def read_dicom_tree(
    root: str | Path, class_list: str | Sequence[str] = "imagenome", **options: Any
) -> list[Record]:
    """The DICOM files under ``root`` (ids, patient, study, view from their tags)."""
    return read_folder(root, class_list, dicom_only=True, **options)
