"""One entry point: ``load_records(path)`` detects the dataset layout and reads it.

Detection order:

1. synthetic archive: ``manifest.csv`` and ``scene_graph/`` ->
   :func:`chextriev.synth.archive.read_archive`;
2. MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-split.csv(.gz)`` or a ``files/pXX/p*/s*`` tree ->
   :func:`chextriev.io.mimic.read_mimic` (scene graphs from ``imagenome_dir``, default
   ``scene_graph/`` or ``silver_dataset/scene_graph/`` inside the folder when present);
3. NIH ChestX-ray14: ``Data_Entry_2017*.csv(.gz)`` -> :func:`chextriev.io.nih.read_nih`;
4. CheXpert: ``train.csv`` / ``valid.csv`` with ``Path`` and the 14 observation columns, in the
   folder or ``CheXpert-v1.0/`` -> :func:`chextriev.io.chexpert.read_chexpert` (options
   ``uncertainty``, ``blank``, ``boxes``, ``frontal_only``, ``test_fraction``, ...);
5. otherwise a plain folder of PNG/JPEG/DICOM (a DICOM tree included), with an optional
   manifest -> :func:`chextriev.io.folder.read_folder`. A ``.csv`` path is read as a manifest.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chextriev.errors import DataFormatError
from chextriev.io.chexpert import is_chexpert_layout, read_chexpert
from chextriev.io.folder import read_dicom_tree, read_folder
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.mimic import is_mimic_layout, read_mimic
from chextriev.io.nih import is_nih_layout, read_nih
from chextriev.records import Record

log = logging.getLogger(__name__)

LAYOUTS = ("synthetic", "mimic", "nih", "chexpert", "folder", "dicom")
#: reader options that only CheXpert's labels give a meaning to
LABEL_POLICY_OPTIONS = ("uncertainty", "blank")

__all__ = [
    "LAYOUTS",
    "detect_layout",
    "load_records",
    "read_chexpert",
    "read_dicom_tree",
    "read_folder",
    "read_mimic",
    "read_nih",
]


def detect_layout(path: str | Path) -> str:
    """One of :data:`LAYOUTS` for the folder ``path``.

    Raises:
        DataFormatError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path} does not exist")
    if path.is_file():
        return "folder"
    if (path / "manifest.csv").is_file() and (path / "scene_graph").is_dir():
        return "synthetic"
    if is_mimic_layout(path):
        return "mimic"
    if is_nih_layout(path):
        return "nih"
    if is_chexpert_layout(path):
        return "chexpert"
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


def _default_imagenome_dir(root: Path) -> Path | None:
    for candidate in (root / "scene_graph", root / "silver_dataset" / "scene_graph"):
        if candidate.is_dir():
            return candidate
    return None


def load_records(
    path: str | Path,
    class_list: str | Sequence[str] = "imagenome",
    *,
    layout: str | None = None,
    **options: Any,
) -> list[Record]:
    """Read any supported dataset folder into records.

    Args:
        path: the dataset folder (or a manifest CSV).
        class_list: class-list name (``"imagenome"``, ``"nih"``) or finding names.
        layout: force one of :data:`LAYOUTS` instead of detecting it.
        **options: passed to the reader (``imagenome_dir`` for MIMIC, ``only_existing`` for
            NIH, ``uncertainty``/``blank``/``boxes`` for CheXpert, ``manifest``/
            ``include_unlisted`` for folders, ...).

    Raises:
        DataFormatError: missing path, no images found, or a label-policy option
            (``uncertainty``, ``blank``) for data that is not CheXpert.
        UnknownNameError: an unknown ``layout`` or class list.
    """
    from chextriev.errors import UnknownNameError

    path = Path(path)
    if layout is None:
        layout = detect_layout(path)
    elif layout not in LAYOUTS:
        raise UnknownNameError("dataset layout", layout, LAYOUTS)
    label_options = sorted(set(options) & set(LABEL_POLICY_OPTIONS))
    if label_options and layout != "chexpert":
        raise DataFormatError(
            f"{', '.join(label_options)} appl{'ies' if len(label_options) == 1 else 'y'} to CheXpert data "
            f"only; {path} is read as {layout!r}, whose labels have no uncertain or blank values"
        )
    log.info("%s: reading as %s", path, layout)
    if layout == "synthetic":
        from chextriev.synth.archive import read_archive  # written by the synth package

        records = read_archive(path, **_accepted(read_archive, options))
        if (
            records
            and records[0].class_names
            and resolve_class_names(class_list) != tuple(records[0].class_names)
        ):
            log.warning(
                "the archive uses its own class list %s; %r ignored",
                records[0].class_names,
                class_list,
            )
        return records
    if layout == "mimic":
        if "imagenome_dir" not in options:
            options["imagenome_dir"] = _default_imagenome_dir(path)
        return read_mimic(path, class_list, **options)
    if layout == "nih":
        return read_nih(path, class_list, **options)
    if layout == "chexpert":
        return read_chexpert(path, class_list, **options)
    if path.is_file():
        return read_folder(path.parent, class_list, manifest=path, **options)
    if layout == "dicom":
        return read_dicom_tree(path, class_list, **options)
    return read_folder(path, class_list, **options)
