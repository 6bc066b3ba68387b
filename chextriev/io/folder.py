"""A plain folder (or a DICOM tree) of PNG / JPEG / DICOM images, with an optional manifest CSV.

The walk (:func:`iter_image_files`) is recursive, sorted, skips hidden entries, and never opens
a file whose extension says what it is: ``.png .jpg .jpeg .dcm .dicom .dic`` are images,
metadata and index files (``.csv .json .npz .sqlite .faiss ...``) are not; only a file with
another or no extension (a PACS export's ``IM0001``) has its first 132 bytes probed for DICOM.
So a streaming source over a million files stats each once and opens none in the main process;
DICOM tags are read later, where the pixels are decoded (:func:`chextriev.io.dicom.merge_tags`).
:func:`read_folder` (the list API used for training) additionally checks every file's content
and reads the DICOM tags at once.

The manifest dialect (THE one, for ``load_records``, ``open_source`` and ``chextriev index``)
-----------------------------------------------------------------------------------------------
A CSV (``.gz`` allowed), one row per image:

* ``path`` (also ``file``, ``filename``, ``image``, ``image_path``): relative to the CSV's
  folder, or absolute. Required.
* optional ``image_id`` (``dicom_id``), ``patient_id`` (``patient``, ``subject_id``),
  ``study_id`` (``study``), ``view`` (``ViewPosition``, ``view_position``), ``sex``
  (``PatientSex``), ``age`` (``PatientAge``; years, or a DICOM age string like ``045Y``),
  ``study_date`` (``StudyDate``), ``split``. Column names are case-insensitive.
* labels, either a ``labels`` column (also ``findings``, ``finding_labels``) of ``|``-separated
  finding names (``No Finding`` / ``normal`` / ``none`` or an empty cell = no finding),
  or one 0/1 column per finding (names case-insensitive; an empty cell makes the row's labels
  unknown; with an explicit class list, a finding without a column counts as 0).

``class_list``: a class-list name (``"imagenome"``, ``"nih"``), finding names, or ``None`` =
as the manifest says: its finding columns (any finding of a known class list, named as the
columns are, in column order) or, for a ``labels`` column, the first known class list that
holds every name it uses. ``"abnormal"``: an ``abnormal`` 0/1 column, else the ``labels``
column (any finding named: 1; ``No Finding`` / ``normal`` / ``none`` / empty: 0), else the
finding columns (any 1: 1, all 0: 0, an empty cell: unknown).

DICOM tags win over the manifest for the patient, study, view, sex, age and date (see
:func:`chextriev.io.dicom.merge_tags`); a manifest's ``image_id`` always wins.

A folder's own ``manifest.csv`` / ``labels.csv``: with ``include_unlisted=False`` (the list API's
default) only its rows are read; with ``include_unlisted=True`` (what ``chextriev index`` does
for a folder) every image is read and the manifest adds what it knows. An explicit manifest
(a ``.csv`` source, or ``manifest=``) lists exactly the images to read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from chextriev.errors import DataFormatError, ImageReadError, UnknownNameError
from chextriev.io.dicom import dicom_metadata, is_dicom, merge_tags
from chextriev.io.fields import normalise_age, normalise_sex
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.images import detect_format
from chextriev.io.tables import cell, read_csv
from chextriev.records import Record, any_finding
from chextriev.vocab import CLASS_LISTS, is_abnormality

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.csv", "labels.csv")
PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")
LABEL_COLUMNS = ("labels", "findings", "finding_labels")
#: manifest field -> accepted column names (lower case)
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image_id": ("image_id", "dicom_id"),
    "patient_id": ("patient_id", "patient", "subject_id"),
    "study_id": ("study_id", "study"),
    "view": ("view", "viewposition", "view_position"),
    "sex": ("sex", "patientsex", "patient_sex"),
    "age": ("age", "patientage", "patient_age"),
    "study_date": ("study_date", "studydate"),
    "split": ("split",),
}
NO_FINDING_NAMES = ("no finding", "normal", "none")
#: images by extension: accepted without opening the file
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"})
#: never images (metadata, our own outputs): skipped without opening
NON_IMAGE_EXTENSIONS = frozenset({
    ".json", ".csv", ".tsv", ".txt", ".md", ".npz", ".npy", ".gz", ".zip", ".xml", ".html",
    ".sqlite", ".sqlite-wal", ".sqlite-shm", ".db", ".faiss", ".py", ".yaml", ".yml", ".ckpt",
    ".pt", ".pth", ".log", ".parquet", ".tmp", ".pdf",
})  # fmt: skip
_EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


def file_version(stat: os.stat_result) -> str:
    """``"<size>:<mtime_ns>"``: the change-detection version of a file record."""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _is_candidate(path: str, name: str) -> bool:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return True
    if ext in NON_IMAGE_EXTENSIONS:
        return False
    return is_dicom(path)  # no or unknown extension: probe for a DICOM preamble / stream


def iter_image_files(
    root: str | Path, *, exclude: Sequence[str | Path] = ()
) -> Iterator[tuple[str, str]]:
    """``(resolved absolute path, version)`` of every image file under ``root``, sorted.

    Hidden files and folders are skipped, as are the folders in ``exclude`` (e.g. an index
    folder inside the archive). Only files without a known extension are opened (132 bytes).

    Raises:
        DataFormatError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root} is not a folder")
    excluded = {os.path.realpath(e) for e in exclude}
    stack = [os.path.realpath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as error:
            log.warning("cannot list %s: %s", folder, error.strerror or error)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if entry.path not in excluded:
                        subfolders.append(entry.path)
                    continue
                if not entry.is_file() or not _is_candidate(entry.path, entry.name):
                    continue
                stat = entry.stat()
            except OSError:
                continue
            path = entry.path if not entry.is_symlink() else os.path.realpath(entry.path)
            yield path, file_version(stat)
        stack.extend(reversed(subfolders))  # depth first, in name order


def find_manifest(root: Path) -> Path | None:
    """``manifest.csv`` or ``labels.csv`` directly in ``root``."""
    for name in MANIFEST_NAMES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


# ------------------------------------------------------------------------------- manifest
@dataclass
class ManifestRow:
    """One manifest row: the file it names and what it says about it."""

    path: str  # resolved absolute path
    where: str  # "<csv>:<line>" for messages
    fields: dict[str, Any] = field(default_factory=dict)  # image_id, patient_id, ..., split
    labels: np.ndarray | None = None  # (C,) over the manifest's class names; None = unknown


@dataclass
class Manifest:
    """A parsed manifest: its rows (in file order) and the class names of their labels."""

    path: Path
    rows: list[ManifestRow]
    class_names: tuple[str, ...]

    def by_path(self) -> dict[str, ManifestRow]:
        return {row.path: row for row in self.rows}


def _canonical_findings() -> dict[str, str]:
    """lower-case finding name -> its spelling in the first class list holding it."""
    out: dict[str, str] = {}
    for names in CLASS_LISTS.values():
        for name in names:
            out.setdefault(name.lower(), name)
    return out


def _label_names_list(used: set[str], where: Path) -> tuple[str, ...]:
    """The first known class list holding every name in ``used`` (lower case)."""
    for names in CLASS_LISTS.values():
        lower = {n.lower() for n in names}
        if used <= lower:
            return tuple(names)
    known = _canonical_findings()
    unknown = sorted(used - set(known))
    if unknown:
        raise UnknownNameError("finding", f"{unknown[0]} (in {where})", sorted(known.values()))
    raise DataFormatError(
        f"{where}: the labels mix class lists ({', '.join(sorted(used))}); pass a class list"
    )


def _parse_value(value: Any, column: str, where: str) -> float | None:
    text = cell(value)
    if text is None:
        return None
    try:
        return 1.0 if float(text) >= 0.5 else 0.0
    except ValueError:
        raise DataFormatError(f"{where}: column {column!r} must be 0/1, got {text!r}") from None


def read_manifest(
    path: str | Path,
    class_list: str | Sequence[str] | None = None,
    *,
    base: str | Path | None = None,
) -> Manifest:
    """Parse a manifest CSV in the dialect of this module.

    Args:
        path: the CSV.
        class_list: class-list name, finding names, or ``None`` (as the manifest says).
        base: folder relative paths are resolved against (default: the CSV's folder).

    Raises:
        DataFormatError: unreadable CSV, no path column, an empty path, a non-0/1 label.
        UnknownNameError: a finding name that the class list does not hold (lists the valid).
    """
    path = Path(path)
    frame = read_csv(path)
    lower = {c.lower(): c for c in frame.columns}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if path_col is None:
        raise DataFormatError(
            f"{path}: needs a path column (one of {', '.join(PATH_COLUMNS)}); "
            f"found: {', '.join(frame.columns)}"
        )
    columns = {name: next((lower[a] for a in aliases if a in lower), None)
               for name, aliases in COLUMN_ALIASES.items()}  # fmt: skip
    label_col = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    records = frame.to_dict("records")

    # Which class names the labels are over.
    finding_cols: list[tuple[str, str]] = []  # (column, class name)
    if class_list is not None:
        names = resolve_class_names(class_list)
        finding_cols = [(lower[n.lower()], n) for n in names if n.lower() in lower]
        if is_abnormality(names) and not finding_cols and label_col is None:
            # no abnormal column: the manifest's own finding columns, abnormal when any is 1
            own = read_manifest(path, None, base=base)
            return Manifest(path, [replace(row, labels=None if row.labels is None else any_finding(row.labels)[None])
                                   for row in own.rows], names)
    else:
        known = _canonical_findings()
        taken = {c for c in columns.values() if c} | {path_col, label_col}
        finding_cols = [(c, c) for c in frame.columns if c.lower() in known and c not in taken]
        names = tuple(n for _, n in finding_cols)
        if label_col is not None and not finding_cols:
            used = set()
            for row in records:
                for item in (cell(row[label_col]) or "").split("|"):
                    item = item.strip().lower()
                    if item and item not in NO_FINDING_NAMES:
                        used.add(item)
            names = _label_names_list(used, path) if used else tuple(next(iter(CLASS_LISTS.values())))
    index = {n.lower(): i for i, n in enumerate(names)}

    root = Path(base) if base is not None else path.parent
    rows: list[ManifestRow] = []
    for lineno, row in enumerate(records, start=2):
        where = f"{path}:{lineno}"
        rel = cell(row[path_col])
        if rel is None:
            raise DataFormatError(f"{where}: empty {path_col}")
        file_path = Path(rel) if Path(rel).is_absolute() else root / rel
        fields: dict[str, Any] = {}
        for name, column in columns.items():
            value = cell(row[column]) if column else None
            if value is None:
                continue
            if name == "sex":
                value = normalise_sex(value)
            elif name == "age":
                value = normalise_age(value)
            if value is not None:
                fields[name] = value
        labels: np.ndarray | None = None
        if label_col is not None and not finding_cols:
            labels = np.zeros(len(names), dtype=np.float32)  # an empty cell: no finding
            for item in (cell(row[label_col]) or "").split("|"):
                item = item.strip()
                if not item or item.lower() in NO_FINDING_NAMES:
                    continue
                if is_abnormality(names):  # any named finding makes the image abnormal
                    labels[0] = 1.0
                    continue
                if item.lower() not in index:
                    raise UnknownNameError("finding", f"{item} (in {where})", names)
                labels[index[item.lower()]] = 1.0
        elif finding_cols:
            values = [_parse_value(row[c], c, where) for c, _ in finding_cols]
            if all(v is not None for v in values):
                labels = np.zeros(len(names), dtype=np.float32)
                for (_, name), v in zip(finding_cols, values):
                    labels[index[name.lower()]] = v
        rows.append(ManifestRow(os.path.realpath(file_path), where, fields, labels))
    return Manifest(path, rows, tuple(names))


def _relative_id(path: str, root: str) -> str:
    rel = os.path.relpath(path, root) if path.startswith(root + os.sep) else os.path.basename(path)
    stem, ext = os.path.splitext(rel)
    return (stem if ext else rel).replace(os.sep, "/")


def record_for_file(
    path: str,
    version: str | None,
    *,
    root: str,
    origin: str,
    row: ManifestRow | None = None,
    class_names: tuple[str, ...] = (),
    fmt: str | None = None,
) -> Record:
    """The record of one image file (no file is opened): ids from the path, what ``row`` says.

    ``image_id`` is the manifest's, else the path relative to ``root`` without its suffix
    (``meta["image_id_source"]`` says which: a DICOM's SOPInstanceUID replaces a path id when its
    tags are merged).
    """
    meta: dict[str, Any] = {}
    if fmt is None:
        fmt = _EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is not None:
        meta["format"] = fmt
    fields = row.fields if row is not None else {}
    image_id = fields.get("image_id")
    meta["image_id_source"] = "manifest" if image_id else "path"
    for name in ("sex", "age", "study_date"):
        if fields.get(name) is not None:
            meta[name] = fields[name]
    labels = row.labels if row is not None else None
    return Record(
        source=Path(path),
        image_id=image_id or _relative_id(path, root),
        patient_id=fields.get("patient_id"),
        study_id=fields.get("study_id"),
        view=fields.get("view"),
        class_names=class_names if labels is not None else (),
        labels=labels,
        origin=origin,
        split=fields.get("split"),
        meta=meta,
        key=path,
        version=version,
    )


def _read_tags(rec: Record) -> None:
    try:
        tags = dicom_metadata(rec.source)
    except ImageReadError as exc:
        log.warning("cannot read the DICOM tags of %s: %s", rec.source, exc.reason)
        return
    merge_tags(rec, tags)


def _stat_version(path: str) -> str | None:
    try:
        return file_version(os.stat(path))
    except OSError:
        return None


# ------------------------------------------------------------------------------- streaming
def iter_folder(
    root: str | Path,
    class_list: str | Sequence[str] | None = None,
    *,
    manifest: str | Path | None = None,
    include_unlisted: bool = True,
    exclude: Sequence[str | Path] = (),
) -> Iterator[Record]:
    """Records of a folder, streamed: the walk, with a manifest's rows as hints (see module doc).

    Only the files are listed and stat-ed; formats come from extensions (``meta["format"]``
    absent for probed files) and DICOM tags are left for the decoder. With ``manifest`` and
    ``include_unlisted=False`` only its rows are yielded (in manifest order).

    Raises:
        DataFormatError: ``root`` is not a folder, or a bad manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root} is not a folder")
    real_root = os.path.realpath(root)
    manifest_path = Path(manifest) if manifest is not None else find_manifest(root)
    parsed = read_manifest(manifest_path, class_list) if manifest_path is not None else None
    origin = f"folder:{manifest_path or root}"
    if parsed is not None and not include_unlisted:
        yield from iter_manifest(parsed, root=real_root)
        return
    rows = parsed.by_path() if parsed is not None else {}
    names = parsed.class_names if parsed is not None else ()
    for path, version in iter_image_files(root, exclude=exclude):
        yield record_for_file(path, version, root=real_root, origin=origin, row=rows.get(path),
                              class_names=names)


def iter_manifest(
    manifest: Manifest | str | Path,
    class_list: str | Sequence[str] | None = None,
    *,
    root: str | None = None,
    strict: bool = False,
) -> Iterator[Record]:
    """The records a manifest lists, in its order.

    A row naming a missing file raises :class:`DataFormatError` with ``strict``; otherwise it
    is skipped with one warning for all of them.
    """
    parsed = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, class_list)
    real_root = root or os.path.realpath(parsed.path.parent)
    origin = f"folder:{parsed.path}"
    missing: list[str] = []
    for row in parsed.rows:
        version = _stat_version(row.path)
        if version is None or not os.path.isfile(row.path):
            if strict:
                raise DataFormatError(f"{row.where}: {row.path} is not an image file")
            missing.append(row.path)
            continue
        yield record_for_file(row.path, version, root=real_root, origin=origin, row=row,
                              class_names=parsed.class_names)
    if missing:
        log.warning("%d file(s) listed in %s do not exist (first: %s)", len(missing),
                    parsed.path, missing[0])


# ------------------------------------------------------------------------------- list API
def read_folder(
    root: str | Path,
    class_list: str | Sequence[str] | None = "imagenome",
    *,
    manifest: str | Path | None = None,
    include_unlisted: bool = False,
    dicom_only: bool = False,
    progress: bool = True,
) -> list[Record]:
    """Read a folder of PNG / JPEG / DICOM images into records, checking every file.

    Unlike the streaming :func:`iter_folder`, every file's content is checked (a text file named
    ``.png`` is left out), ``meta["format"]`` is set from it, and the DICOM tags are read at once
    (patient, study, view, UIDs; ``image_id`` = SOPInstanceUID unless the manifest names it).

    Args:
        root: the folder (searched recursively).
        class_list: class-list name, finding names, or ``None``, for manifest labels.
        manifest: a CSV (default: ``manifest.csv``/``labels.csv`` in ``root`` when present).
        include_unlisted: with a manifest, also keep images it does not list (``labels=None``).
        dicom_only: keep only DICOM files (a DICOM tree).
        progress: show a tqdm bar.

    Raises:
        DataFormatError: no image found, a manifest without a path column, or a manifest row
            naming a missing file.
    """
    root = Path(root)
    manifest_path = Path(manifest) if manifest is not None else find_manifest(root)
    if manifest_path is not None and not include_unlisted:
        candidates = list(iter_manifest(read_manifest(manifest_path, class_list),
                                        root=os.path.realpath(root), strict=True))
    else:
        candidates = list(iter_folder(root, class_list, manifest=manifest_path))
    records: list[Record] = []
    for rec in tqdm(candidates, desc="folder", unit="img", disable=not progress, leave=False):
        try:
            fmt = detect_format(rec.source)
        except ImageReadError:
            fmt = None
        if fmt is None:
            if manifest_path is not None and not include_unlisted:
                raise DataFormatError(f"{rec.source} (in {manifest_path}) is not an image file")
            continue
        if dicom_only and fmt != "dicom":
            continue
        rec.meta["format"] = fmt
        if fmt == "dicom":
            _read_tags(rec)
        records.append(rec)
    if not records:
        kind = "DICOM" if dicom_only else "PNG, JPEG or DICOM"
        raise DataFormatError(f"{root}: no {kind} images found (searched recursively)")
    return records


def read_dicom_tree(
    root: str | Path, class_list: str | Sequence[str] | None = "imagenome", **options: Any
) -> list[Record]:
    """The DICOM files under ``root`` (ids, patient, study, view from their tags)."""
    return read_folder(root, class_list, dicom_only=True, **options)
