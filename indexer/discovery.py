"""Find the images of an archive: a recursive walk (by extension, and by DICOM preamble for files
without a known extension) or a manifest CSV; and decide which views are indexed.

Views: only frontal radiographs (``PA``, ``AP``) are indexed. The view comes from the DICOM
``ViewPosition`` tag, else from the manifest's ``view`` column. A file whose view is unknown
(a PNG/JPEG without a manifest, a DICOM without ``ViewPosition``) is **assumed frontal** and
indexed (its view is stored as NULL); any other known view (``LL``, ``LATERAL``, ...) is recorded
as skipped with the reason.

Manifest CSV (``--manifest FILE``, or ``manifest.csv`` at the root of the source folder, which
then only adds hints to the walk): a ``path`` column (relative to the CSV's folder or absolute),
optional ``image_id``, ``patient_id``/``patient``, ``study_id``/``study``, ``view``/
``ViewPosition``, ``sex``, ``age``, and 0/1 columns named after findings of a known class list
(empty = unknown). An explicit ``--manifest`` restricts indexing to the listed files.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import DataFormatError
from chextriev.io.dicom import is_dicom
from chextriev.vocab import IMAGENOME_FINDINGS, NIH_FINDINGS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"})
#: Extensions never probed for a DICOM preamble (metadata and our own outputs).
NON_IMAGE_EXTENSIONS = frozenset({
    ".json", ".csv", ".tsv", ".txt", ".md", ".npz", ".npy", ".gz", ".zip", ".xml", ".html",
    ".sqlite", ".sqlite-wal", ".sqlite-shm", ".db", ".faiss", ".py", ".yaml", ".yml", ".ckpt",
    ".pt", ".pth", ".log", ".parquet", ".tmp",
})
FRONTAL_VIEWS = frozenset({"PA", "AP", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR", "AP AXIAL"})
KNOWN_FINDINGS = frozenset(IMAGENOME_FINDINGS) | frozenset(NIH_FINDINGS)
_ALIASES = {
    "patient": "patient_id", "subject_id": "patient_id", "study": "study_id",
    "viewposition": "view", "view_position": "view", "patient_sex": "sex", "patient_age": "age",
    "dicom_id": "image_id",
}


@dataclass
class Candidate:
    """One file to consider, with what a manifest says about it (``hints``)."""

    path: str  # absolute, resolved
    hints: dict[str, Any] = field(default_factory=dict)


def view_decision(view: str | None) -> tuple[str | None, str | None]:
    """``(normalised view or None, skip reason or None)`` for a view string."""
    if view is None or not str(view).strip():
        return None, None
    text = str(view).strip().upper()
    if text in FRONTAL_VIEWS:
        return ("PA" if text.startswith("POSTERO") else "AP" if text.startswith("ANTERO") else text), None
    return text, f"non-frontal view {text} (only PA/AP are indexed)"


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{absolute path: hints}`` from a manifest CSV (see the module docstring)."""
    path = Path(path)
    base = path.parent.resolve()
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if "path" not in columns:
                raise DataFormatError(f"manifest {path} has no 'path' column (columns: {columns})")
            findings = [c for c in columns if c in KNOWN_FINDINGS]
            out: dict[str, dict[str, Any]] = {}
            for row in reader:
                hints: dict[str, Any] = {}
                for column, value in row.items():
                    if column is None or value is None or value == "" or column in findings:
                        continue
                    key = _ALIASES.get(column.lower(), column.lower())
                    if key in ("image_id", "patient_id", "study_id", "view", "sex", "study_date"):
                        hints[key] = value
                    elif key == "age":
                        try:
                            hints["age"] = float(value)
                        except ValueError:
                            pass
                known = {f: int(float(row[f])) for f in findings if row.get(f) not in (None, "")}
                if findings and len(known) == len(findings):
                    hints["known_findings"] = known
                file_path = Path(row["path"])
                file_path = file_path if file_path.is_absolute() else base / file_path
                out[str(file_path.resolve())] = hints
            return out
    except (OSError, csv.Error, ValueError) as error:
        raise DataFormatError(f"cannot read manifest {path}: {error}") from error


def _is_image_file(path: str) -> bool:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return True
    if ext in NON_IMAGE_EXTENSIONS:
        return False
    return is_dicom(path)  # no or unknown extension: probe the 128-byte preamble + "DICM"


def walk(source: str | Path, *, exclude: tuple[str | Path, ...] = ()) -> list[str]:
    """Absolute paths of the image files under ``source`` (sorted, hidden entries skipped)."""
    source = Path(source).resolve()
    excluded = {str(Path(e).resolve()) for e in exclude}
    if source.is_file():
        return [str(source)] if _is_image_file(str(source)) else []
    out: list[str] = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.join(root, d) not in excluded)
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            if _is_image_file(full):
                out.append(full)
    return out


def discover(source: str | Path, *, manifest: str | Path | None = None,
             exclude: tuple[str | Path, ...] = ()) -> list[Candidate]:
    """The candidates of an archive.

    ``source``: a folder (walked; ``manifest.csv`` at its root adds hints), a manifest CSV, or a
    single image file. ``manifest``: an explicit manifest; only its files are candidates.
    ``exclude``: folders not to walk (e.g. the index folder when it lies inside the source).
    """
    source = Path(source)
    if not source.exists():
        raise DataFormatError(f"source {source} does not exist")
    if manifest is None and source.is_file() and source.suffix.lower() in (".csv", ".tsv"):
        manifest = source
    if manifest is not None:
        hints = read_manifest(manifest)
        missing = [p for p in hints if not os.path.isfile(p)]
        if missing:
            log.warning("%d file(s) listed in %s do not exist (first: %s)", len(missing),
                        manifest, missing[0])
        return [Candidate(p, h) for p, h in hints.items() if os.path.isfile(p)]
    root_manifest = source / "manifest.csv"
    hints = read_manifest(root_manifest) if source.is_dir() and root_manifest.is_file() else {}
    return [Candidate(p, hints.get(p, {})) for p in walk(source, exclude=exclude)]
