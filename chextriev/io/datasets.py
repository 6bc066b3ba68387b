"""One entry point: ``load_records(path)`` detects the dataset layout and reads it.

Detection order (the registry :data:`DATASET_LAYOUTS`; a new reader joins it with
:func:`register_layout`):

1. synthetic archive: ``manifest.csv`` and ``scene_graph/`` ->
   :func:`chextriev.io.synthetic.read_archive` (its own 9 findings whatever the class list,
   but for ``"abnormal"``: any drawn finding, :func:`chextriev.records.abnormality_record`);
2. MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-split.csv(.gz)`` or a ``files/pXX/p*/s*`` tree ->
   :func:`chextriev.io.mimic.read_mimic` (scene graphs from ``imagenome_dir``, default
   ``scene_graph/`` or ``silver_dataset/scene_graph/`` inside the folder when present);
3. NIH ChestX-ray14: ``Data_Entry_2017*.csv(.gz)`` -> :func:`chextriev.io.nih.read_nih`;
4. CheXpert: ``train.csv`` / ``valid.csv`` with ``Path`` and the 14 observation columns, in the
   folder or ``CheXpert-v1.0/`` -> :func:`chextriev.io.chexpert.read_chexpert` (options
   ``uncertainty``, ``blank``, ``boxes``, ``frontal_only``, ``test_fraction``, ...);
5. otherwise a plain folder of PNG/JPEG/DICOM (a DICOM tree included), with an optional
   manifest -> :func:`chextriev.io.folder.read_folder`. A ``.csv`` path is read as a manifest.

For indexing, :func:`chextriev.io.sources.open_source` uses the same detection and streams.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.io.chexpert import is_chexpert_layout, read_chexpert
from chextriev.io.folder import read_dicom_tree, read_folder
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.mimic import is_mimic_layout, read_mimic
from chextriev.io.nih import is_nih_layout, read_nih
from chextriev.records import Record, abnormality_record
from chextriev.vocab import is_abnormality

log = logging.getLogger(__name__)

#: reader options that only CheXpert's labels give a meaning to
LABEL_POLICY_OPTIONS = ("uncertainty", "blank")

__all__ = [
    "DATASET_LAYOUTS",
    "LAYOUTS",
    "DatasetLayout",
    "detect_layout",
    "layout_names",
    "load_records",
    "read_chexpert",
    "read_dicom_tree",
    "read_folder",
    "read_mimic",
    "read_nih",
    "register_layout",
]


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset layout with its own reader.

    ``detect(folder) -> bool`` must be cheap (a few ``stat`` calls, no walk of the images);
    ``read(folder, class_list, **options) -> list[Record]``; ``class_list`` is the reader's
    default when the caller passes ``None`` ("as the dataset says"); ``None`` here means the
    reader ignores the argument (its archive carries its own class list).
    """

    name: str
    detect: Callable[[Path], bool]
    read: Callable[..., list[Record]]
    class_list: str | None = None


def _is_synthetic(path: Path) -> bool:
    return (path / "manifest.csv").is_file() and (path / "scene_graph").is_dir()


def _read_synthetic(path: Path, class_list: Any = None, **options: Any) -> list[Record]:
    from chextriev.io.synthetic import read_archive

    records = read_archive(path, **_accepted(read_archive, options))
    if records and class_list is not None and is_abnormality(resolve_class_names(class_list)):
        return [abnormality_record(r) for r in records]  # the archive's normal flag: no finding drawn
    if (
        records
        and class_list is not None
        and records[0].class_names
        and resolve_class_names(class_list) != tuple(records[0].class_names)
    ):
        log.warning(
            "the archive uses its own class list %s; %r ignored", records[0].class_names, class_list
        )
    return records


def _default_imagenome_dir(root: Path) -> Path | None:
    for candidate in (root / "scene_graph", root / "silver_dataset" / "scene_graph"):
        if candidate.is_dir():
            return candidate
    return None


def _read_mimic(path: Path, class_list: Any, **options: Any) -> list[Record]:
    if "imagenome_dir" not in options:
        options["imagenome_dir"] = _default_imagenome_dir(path)
    return read_mimic(path, class_list, **options)


#: Dataset layouts in detection order; the plain folder is the fallback after all of them.
DATASET_LAYOUTS: list[DatasetLayout] = [
    DatasetLayout("synthetic", _is_synthetic, _read_synthetic, None),
    DatasetLayout("mimic", is_mimic_layout, _read_mimic, "imagenome"),
    DatasetLayout("nih", is_nih_layout, read_nih, "nih"),
    DatasetLayout("chexpert", is_chexpert_layout, read_chexpert, "chexpert"),
]
#: The fallback layouts (plain folder, DICOM-only tree).
FOLDER_LAYOUTS = ("folder", "dicom")
LAYOUTS = tuple(layout.name for layout in DATASET_LAYOUTS) + FOLDER_LAYOUTS


def register_layout(layout: DatasetLayout, *, before: str | None = None) -> None:
    """Add a dataset layout to the detection (at the end, or before the layout ``before``)."""
    global LAYOUTS
    names = [entry.name for entry in DATASET_LAYOUTS]
    if layout.name in names or layout.name in FOLDER_LAYOUTS:
        raise ValueError(f"dataset layout {layout.name!r} is already registered")
    position = names.index(before) if before in names else len(DATASET_LAYOUTS)
    DATASET_LAYOUTS.insert(position, layout)
    LAYOUTS = tuple(entry.name for entry in DATASET_LAYOUTS) + FOLDER_LAYOUTS


def layout_names() -> tuple[str, ...]:
    """Every layout name :func:`load_records` accepts (registered ones included)."""
    return tuple(entry.name for entry in DATASET_LAYOUTS) + FOLDER_LAYOUTS


def dataset_layout(name: str) -> DatasetLayout | None:
    """The registered dataset layout ``name`` (``None`` for ``folder``/``dicom``)."""
    for entry in DATASET_LAYOUTS:
        if entry.name == name:
            return entry
    if name in FOLDER_LAYOUTS:
        return None
    raise UnknownNameError("dataset layout", name, layout_names())


def detect_layout(path: str | Path) -> str:
    """One of :func:`layout_names` for the folder ``path`` (a file: ``"folder"``).

    Raises:
        DataFormatError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path} does not exist")
    if path.is_file():
        return "folder"
    for entry in DATASET_LAYOUTS:
        if entry.detect(path):
            return entry.name
    return "folder"


def _accepted(func: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``func`` accepts (all of them when it takes ``**kwargs``)."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    dropped = sorted(set(options) - set(params))
    if dropped:
        log.debug("%s ignores options %s", func.__qualname__, dropped)
    return {k: v for k, v in options.items() if k in params}


def read_layout(
    path: Path, layout: str, class_list: str | Sequence[str] | None, **options: Any
) -> list[Record]:
    """Read ``path`` with the registered dataset layout ``layout`` (``None`` class list: its own)."""
    entry = dataset_layout(layout)
    if entry is None:
        raise UnknownNameError("dataset layout", layout, [e.name for e in DATASET_LAYOUTS])
    if class_list is None:
        class_list = entry.class_list
    return entry.read(path, class_list, **options)


def load_records(
    path: str | Path,
    class_list: str | Sequence[str] | None = "imagenome",
    *,
    layout: str | None = None,
    **options: Any,
) -> list[Record]:
    """Read any supported dataset folder into records.

    Args:
        path: the dataset folder (or a manifest CSV).
        class_list: class-list name (``"imagenome"``, ``"nih"``), finding names, or ``None``
            (each dataset's own list; a manifest's own columns).
        layout: force one of :func:`layout_names` instead of detecting it.
        **options: passed to the reader (``imagenome_dir`` for MIMIC, ``only_existing`` for
            NIH, ``uncertainty``/``blank``/``boxes`` for CheXpert, ``manifest``/
            ``include_unlisted`` for folders, ...).

    Raises:
        DataFormatError: missing path, no images found, or a label-policy option
            (``uncertainty``, ``blank``) for data that is not CheXpert.
        UnknownNameError: an unknown ``layout`` or class list.
    """
    path = Path(path)
    if layout is None:
        layout = detect_layout(path)
    elif layout not in layout_names():
        raise UnknownNameError("dataset layout", layout, layout_names())
    label_options = sorted(set(options) & set(LABEL_POLICY_OPTIONS))
    if label_options and layout != "chexpert":
        raise DataFormatError(
            f"{', '.join(label_options)} appl{'ies' if len(label_options) == 1 else 'y'} to CheXpert data "
            f"only; {path} is read as {layout!r}, whose labels have no uncertain or blank values"
        )
    log.info("%s: reading as %s", path, layout)
    if layout not in FOLDER_LAYOUTS:
        return read_layout(path, layout, class_list, **options)
    if path.is_file():
        return read_folder(path.parent, class_list, manifest=path, **options)
    if layout == "dicom":
        return read_dicom_tree(path, class_list, **options)
    return read_folder(path, class_list, **options)
