"""Chest ImaGenome scene graphs (``<dicom_id>_SceneGraph.json``) -> boxes and labels.

A scene graph holds ``image_id``, ``patient_id``, ``study_id``, ``viewpoint``; ``objects``
(one per region: ``bbox_name``, ``original_x1/y1/x2/y2`` in pixels of the original image, and
``x1/y1/x2/y2`` on a 224 grid) and ``attributes`` (one per region: ``bbox_name`` and
``attributes``, a list of lists of ``"<category>|<yes|no>|<finding>"`` strings).

Region label ``y[r, f] = 1`` when ANY string for region ``r`` says ``yes`` for finding ``f``
(the published code let the last string win, so a later ``no`` erased a ``yes``: not here).
Image label = OR over regions. The abnormality list (``"abnormal"``): a region is abnormal when
it holds any of the 9 findings, the image when any region is. A region absent from ``objects`` gets a NaN box (masked, the
image is kept). Region names outside :data:`chextriev.vocab.REGIONS` are ignored (debug log);
findings outside the class list are ignored.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import DataFormatError
from chextriev.records import empty_boxes
from chextriev.vocab import IMAGENOME_FINDINGS, NUM_REGIONS, REGIONS, class_list, is_abnormality

log = logging.getLogger(__name__)

SCENE_GRAPH_SUFFIX = "_SceneGraph.json"
_REGION_INDEX = {name: i for i, name in enumerate(REGIONS)}
#: top-level keys some writers use for the original image size (height, width)
_SIZE_KEYS = (
    ("image_height", "image_width"),
    ("original_height", "original_width"),
    ("height", "width"),
)


@dataclass
class SceneGraph:
    """What one scene graph says about one image.

    Attributes:
        image_id: the MIMIC dicom id.
        patient_id, study_id: as strings (``None`` when absent).
        view: ``viewpoint`` (``"PA"``, ``"AP"``, ...) or ``None``.
        boxes: ``(18, 4)`` float32 ``x1, y1, x2, y2`` original pixels, NaN row = missing.
        region_labels: ``(18, C)`` float32 0/1.
        labels: ``(C,)`` float32 0/1, OR over regions.
        class_names: the ``C`` finding names.
        image_size: ``(H, W)`` when the graph states it, else ``None``.
        source: the file it came from (``""`` for a dict).
    """

    image_id: str
    patient_id: str | None
    study_id: str | None
    view: str | None
    boxes: np.ndarray
    region_labels: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: tuple[int, int] | None = None
    source: str = ""

    @property
    def box_mask(self) -> np.ndarray:
        """(18,) bool: True where the region box is present."""
        return ~np.isnan(self.boxes).any(axis=1)


def resolve_class_names(class_names: str | Sequence[str]) -> tuple[str, ...]:
    """A class-list name (``"imagenome"``, ``"nih"``) or a sequence of names -> tuple of names."""
    if isinstance(class_names, str):
        return class_list(class_names)
    return tuple(class_names)


def parse_attribute(text: str) -> tuple[str, bool, str] | None:
    """``"<category>|<yes|no>|<finding>"`` -> ``(category, is_yes, finding)``, ``None`` if malformed."""
    parts = str(text).split("|")
    if len(parts) != 3:
        return None
    category, answer, finding = (p.strip() for p in parts)
    answer = answer.lower()
    if answer not in ("yes", "no"):
        return None
    return category, answer == "yes", finding


def _optional_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _box(obj: dict[str, Any]) -> np.ndarray | None:
    try:
        coords = [float(obj[f"original_{k}"]) for k in ("x1", "y1", "x2", "y2")]
    except (KeyError, TypeError, ValueError):
        return None
    x1, y1, x2, y2 = coords
    if not all(math.isfinite(c) for c in coords) or x2 <= x1 or y2 <= y1:
        return None
    return np.array(coords, dtype=np.float32)


def _image_size(graph: dict[str, Any]) -> tuple[int, int] | None:
    for hkey, wkey in _SIZE_KEYS:
        if hkey in graph and wkey in graph:
            try:
                return int(graph[hkey]), int(graph[wkey])
            except (TypeError, ValueError):
                return None
    return None


def _flatten(attrs: Any) -> Iterator[str]:
    """The attribute strings of a region (a list of lists, or a flat list)."""
    if isinstance(attrs, str):
        yield attrs
    elif isinstance(attrs, (list, tuple)):
        for item in attrs:
            yield from _flatten(item)


def parse_scene_graph(
    graph: dict[str, Any], class_names: str | Sequence[str] = "imagenome", *, source: str = ""
) -> SceneGraph:
    """Parse one scene-graph dict.

    Args:
        graph: the decoded JSON object.
        class_names: finding names (``C`` of them) or a class-list name.
        source: file name for messages.

    Returns:
        :class:`SceneGraph` with ``boxes (18, 4)``, ``region_labels (18, C)``, ``labels (C,)``.

    Raises:
        DataFormatError: ``graph`` is not a scene graph (not an object, no ``image_id``,
            ``objects``/``attributes`` not lists).
    """
    where = source or "scene graph"
    if not isinstance(graph, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(graph).__name__}")
    image_id = _optional_str(graph.get("image_id"))
    if image_id is None:
        raise DataFormatError(f"{where}: missing 'image_id'")
    objects = graph.get("objects", [])
    attributes = graph.get("attributes", [])
    if not isinstance(objects, list) or not isinstance(attributes, list):
        raise DataFormatError(f"{where}: 'objects' and 'attributes' must be lists")
    names = resolve_class_names(class_names)
    if is_abnormality(names):  # any of the findings, per region and for the image
        graph_all = parse_scene_graph(graph, IMAGENOME_FINDINGS, source=source)
        region = graph_all.region_labels.max(axis=1, keepdims=True)
        return replace(graph_all, region_labels=region, labels=region.max(axis=0), class_names=names)
    finding_index = {name.lower(): i for i, name in enumerate(names)}

    boxes = empty_boxes()
    for obj in objects:
        if not isinstance(obj, dict):
            raise DataFormatError(f"{where}: an entry of 'objects' is not an object")
        region = obj.get("bbox_name")
        r = _REGION_INDEX.get(region)
        if r is None:
            log.debug("%s: ignoring unknown region %r", where, region)
            continue
        box = _box(obj)
        if box is None:
            log.debug("%s: region %r has no valid original box; masked", where, region)
            continue
        boxes[r] = box

    region_labels = np.zeros((NUM_REGIONS, len(names)), dtype=np.float32)
    for entry in attributes:
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: an entry of 'attributes' is not an object")
        region = entry.get("bbox_name")
        r = _REGION_INDEX.get(region)
        if r is None:
            log.debug("%s: ignoring attributes of unknown region %r", where, region)
            continue
        for text in _flatten(entry.get("attributes", [])):
            parsed = parse_attribute(text)
            if parsed is None:
                log.debug("%s: ignoring malformed attribute %r", where, text)
                continue
            _, is_yes, finding = parsed
            f = finding_index.get(finding.lower())
            if is_yes and f is not None:
                region_labels[r, f] = 1.0  # any yes wins; a later "no" never erases it

    missing = [REGIONS[i] for i in np.flatnonzero(np.isnan(boxes).any(axis=1))]
    if missing:
        log.debug("%s: %d regions without a box (masked): %s", where, len(missing), missing)
    return SceneGraph(
        image_id=image_id,
        patient_id=_optional_str(graph.get("patient_id")),
        study_id=_optional_str(graph.get("study_id")),
        view=_optional_str(graph.get("viewpoint", graph.get("view"))),
        boxes=boxes,
        region_labels=region_labels,
        labels=region_labels.max(axis=0),
        class_names=names,
        image_size=_image_size(graph),
        source=source,
    )


def read_scene_graph(
    path: str | Path, class_names: str | Sequence[str] = "imagenome"
) -> SceneGraph:
    """Read and parse one ``*_SceneGraph.json`` file.

    Raises:
        DataFormatError: the file is not valid JSON or not a scene graph (message names the file).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            graph = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: malformed scene-graph JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read scene graph: {exc}") from None
    return parse_scene_graph(graph, class_names, source=str(path))


def scene_graph_files(folder: str | Path) -> list[Path]:
    """The ``*_SceneGraph.json`` files under ``folder`` (recursive, sorted); any ``*.json``
    when none is named that way."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"scene-graph folder {folder} does not exist")
    files = sorted(folder.rglob(f"*{SCENE_GRAPH_SUFFIX}"))
    return files or sorted(folder.rglob("*.json"))


def image_id_from_filename(path: str | Path) -> str:
    """``<dicom_id>_SceneGraph.json`` -> ``<dicom_id>``."""
    name = Path(path).name
    return (
        name[: -len(SCENE_GRAPH_SUFFIX)] if name.endswith(SCENE_GRAPH_SUFFIX) else Path(name).stem
    )


def iter_scene_graphs(
    folder: str | Path,
    class_names: str | Sequence[str] = "imagenome",
    *,
    errors: list[DataFormatError] | None = None,
) -> Iterator[SceneGraph]:
    """Yield the parsed scene graphs under ``folder``; a bad file does not stop the batch.

    Args:
        folder: searched recursively for ``*_SceneGraph.json``.
        class_names: finding names or a class-list name.
        errors: when given, each file's :class:`DataFormatError` is appended to it; otherwise
            it is logged as a warning. Either way the other files are still read.
    """
    names = resolve_class_names(class_names)
    for path in scene_graph_files(folder):
        try:
            yield read_scene_graph(path, names)
        except DataFormatError as exc:
            if errors is not None:
                errors.append(exc)
            else:
                log.warning("skipping %s", exc)


def read_scene_graphs(
    folder: str | Path, class_names: str | Sequence[str] = "imagenome"
) -> tuple[dict[str, SceneGraph], list[DataFormatError]]:
    """All scene graphs under ``folder`` by image id, and the errors of the files that failed."""
    errors: list[DataFormatError] = []
    graphs = {g.image_id: g for g in iter_scene_graphs(folder, class_names, errors=errors)}
    return graphs, errors
