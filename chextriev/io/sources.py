"""THE reader path: a source spec -> a :class:`RecordSource` streaming records; record -> bytes.

``open_source(spec)`` accepts

* a folder: a registered dataset layout (synthetic archive, MIMIC-CXR-JPG + ImaGenome, NIH
  ChestX-ray14, ... see :mod:`chextriev.io.datasets`) read by its reader, else a plain folder or
  tree of PNG / JPEG / DICOM streamed by :func:`chextriev.io.folder.iter_folder` (its own
  ``manifest.csv`` adds hints; every image is read);
* a manifest CSV (the dialect of :mod:`chextriev.io.folder`): exactly the files it lists;
* a single PNG / JPEG / DICOM file;
* an ``http://`` or ``https://`` URL: a DICOMweb service root
  (:class:`chextriev.io.dicomweb.DicomwebSource`; options ``modalities``, ``study_date``,
  ``study_uids``, ``credentials``, ``ca_bundle``, ``insecure``, ``page_size``).

``RecordSource.iter_records()`` is streaming and cheap: no pixel is decoded and, for folders,
no file opened (DICOM tags are merged by whoever decodes, :func:`chextriev.io.dicom.merge_tags`).
Every record has its ``key`` and ``version`` (see :class:`chextriev.records.Record`).

``fetch_bytes(record)`` reads a file or retrieves a DICOMweb instance (WADO-RS); it works in
worker processes once :func:`register_connections` has been given ``source.connections()``
(the pool initializer does that; the process that opened the source has them already).
Failures raise :class:`~chextriev.errors.ImageReadError` (one record) or
:class:`~chextriev.errors.SourceError` (the whole source), naming the key without secrets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from chextriev.errors import DataFormatError
from chextriev.io.datasets import FOLDER_LAYOUTS, detect_layout, layout_names, read_layout
from chextriev.io.folder import file_version, iter_folder, iter_manifest, read_manifest
from chextriev.io.images import detect_format
from chextriev.io.source_base import Connection, RecordSource, fetch_bytes, register_connections
from chextriev.records import Record

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".csv.gz")
URL_SCHEMES = ("http://", "https://")

__all__ = [
    "Connection",
    "DatasetSource",
    "FileSource",
    "FolderSource",
    "ManifestSource",
    "RecordSource",
    "fetch_bytes",
    "is_url",
    "open_source",
    "register_connections",
]


def _with_version(record: Record) -> Record:
    if record.version is None and isinstance(record.source, (str, Path)):
        try:
            record.version = file_version(os.stat(record.source))
        except OSError:
            pass  # the decoder reports the missing file
    return record


class DatasetSource(RecordSource):
    """A folder in a registered dataset layout, read by its reader (CSV-driven, no walk)."""

    def __init__(self, path: str | Path, layout: str, class_list: Any = None, **options: Any):
        self.path = Path(path)
        self.layout = layout
        self.class_list = class_list
        self.options = options
        self.description = f"{layout} dataset {self.path}"

    def iter_records(self) -> Iterator[Record]:
        options = {"progress": False, **self.options}
        for record in read_layout(self.path, self.layout, self.class_list, **options):
            yield _with_version(record)


class FolderSource(RecordSource):
    """A plain folder or tree of images, walked (its ``manifest.csv`` adds hints)."""

    def __init__(self, path: str | Path, class_list: Any = None, *,
                 exclude: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.class_list = class_list
        self.exclude = tuple(exclude)
        self.description = f"folder {self.path}"

    def iter_records(self) -> Iterator[Record]:
        return iter_folder(self.path, self.class_list, include_unlisted=True, exclude=self.exclude)


class ManifestSource(RecordSource):
    """Exactly the files a manifest CSV lists (missing files: one warning, skipped)."""

    def __init__(self, path: str | Path, class_list: Any = None):
        self.path = Path(path)
        self.class_list = class_list
        self.description = f"manifest {self.path}"

    def iter_records(self) -> Iterator[Record]:
        return iter_manifest(read_manifest(self.path, self.class_list))


class FileSource(RecordSource):
    """One image file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.description = f"file {self.path}"

    def iter_records(self) -> Iterator[Record]:
        real = os.path.realpath(self.path)
        yield Record(source=Path(real), image_id=self.path.stem, origin=f"file:{self.path}",
                     meta={"image_id_source": "path"}, key=real,
                     version=file_version(os.stat(real)))


def is_url(spec: Any) -> bool:
    """True for an ``http://`` or ``https://`` string (a DICOMweb service root)."""
    return isinstance(spec, str) and spec.lower().startswith(URL_SCHEMES)


def open_source(
    spec: str | Path,
    *,
    manifest: str | Path | None = None,
    class_list: str | Sequence[str] | None = None,
    layout: str | None = None,
    exclude: Sequence[str | Path] = (),
    **options: Any,
) -> RecordSource:
    """The record source for ``spec`` (see the module docstring).

    Args:
        spec: a folder, a manifest CSV, an image file, or an ``http(s)://`` DICOMweb root.
        manifest: an explicit manifest: only its files are read (``spec`` is then ignored
            unless it is a URL, where a manifest makes no sense).
        class_list: class list for labels; ``None`` = each source's own (see
            :func:`chextriev.io.folder.read_manifest`).
        layout: force a dataset layout (one of :func:`chextriev.io.datasets.layout_names`).
        exclude: folders a folder walk must not enter (e.g. the index folder).
        **options: for DICOMweb, see :class:`chextriev.io.dicomweb.DicomwebSource`; for dataset
            layouts, passed to their reader.

    Raises:
        DataFormatError: a path that does not exist, a file that is neither an image nor a
            manifest, or an unknown URL scheme.
        UnknownNameError: an unknown ``layout``.
    """
    if is_url(spec):
        if manifest is not None:
            raise DataFormatError("a manifest cannot be combined with a DICOMweb source")
        from chextriev.io.dicomweb import DicomwebSource

        return DicomwebSource(str(spec), **options)
    text = str(spec)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise DataFormatError(
            f"unsupported source scheme {scheme!r} in {text.split('@')[-1]!r}: give a folder, a "
            "manifest CSV, an image file, or an http(s):// DICOMweb service root"
        )
    if manifest is not None:
        if not Path(manifest).is_file():
            raise DataFormatError(f"manifest {manifest} does not exist")
        return ManifestSource(manifest, class_list)
    path = Path(spec)
    if not path.exists():
        raise DataFormatError(f"source {path} does not exist")
    if path.is_file():
        if path.name.lower().endswith(MANIFEST_SUFFIXES):
            return ManifestSource(path, class_list)
        if detect_format(path) is None:
            raise DataFormatError(
                f"{path} is neither a PNG, JPEG or DICOM image nor a manifest CSV "
                f"({'/'.join(MANIFEST_SUFFIXES)})"
            )
        return FileSource(path)
    if layout is None:
        layout = detect_layout(path)
    elif layout not in layout_names():
        from chextriev.errors import UnknownNameError

        raise UnknownNameError("dataset layout", layout, layout_names())
    if layout in FOLDER_LAYOUTS:
        return FolderSource(path, class_list, exclude=exclude)
    return DatasetSource(path, layout, class_list, **options)
