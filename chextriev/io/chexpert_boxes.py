"""The CheXpert box annotations published with HAM (``BBoxes.json``) -> lesion boxes per image.

Format: one JSON object. Keys are image paths relative to the CheXpert images folder (the
folder that holds ``train/`` and ``valid/``), e.g. ``train/patient40093/study4/view1_frontal.jpg``;
values map an abnormality name to a list of ``[xmin, ymin, xmax, ymax]`` boxes in pixels of the
original image::

    {"train/patient40093/study4/view1_frontal.jpg":
        {"Cardiomegaly": [[1417, 537, 2525, 1565]],
         "Edema": [[879, 472, 1433, 1511], [1879, 544, 2669, 1539]]}}

The published file (2,348 images, 6,101 boxes, 9 abnormalities) spells some names
inconsistently: ``Pleural_Effusion``, ``edema`` beside ``Edema``, ``Enlarg_Cardiomediastinum``
beside ``Enlarged_Cardiomediastinum``. Names are normalised to the CheXpert observations with
:func:`chextriev.vocab.normalise_finding`; a name that maps to no observation is reported
(``BoxAnnotations.unmapped``, and a warning) and its boxes are kept apart
(``unmapped_boxes``), never dropped silently. A box that is not four finite numbers with
``xmax > xmin`` and ``ymax > ymin`` is reported in ``invalid`` (and a warning), not used.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import DataFormatError
from chextriev.vocab import CHEXPERT_OBSERVATIONS, normalise_finding

log = logging.getLogger(__name__)

#: File names looked for when a CheXpert folder is read with ``boxes="auto"``.
BOX_FILE_NAMES: tuple[str, ...] = ("BBoxes.json", "bboxes.json")
#: First path components of CheXpert image paths relative to the images folder.
SPLIT_FOLDERS: frozenset[str] = frozenset({"train", "valid", "test"})

Box = tuple[float, float, float, float]


def image_key(path: str) -> str:
    """A CheXpert image path relative to the images folder, whatever its prefix.

    ``"CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"`` (a CSV ``Path``),
    ``"./train/patient00001/study1/view1_frontal.jpg"`` and ``"train\\\\patient00001\\\\..."`` all
    give ``"train/patient00001/study1/view1_frontal.jpg"`` (the box JSON's keys).
    """
    parts = [p for p in str(path).strip().replace("\\", "/").split("/") if p not in ("", ".")]
    for i, part in enumerate(parts[:-1]):
        if part in SPLIT_FOLDERS:  # drop what precedes it: the release folder (CheXpert-v1.0, ...-small)
            return "/".join(parts[i:])
    return "/".join(parts)


@dataclass
class BoxAnnotations:
    """Parsed box annotations.

    Attributes:
        source: where they were read from.
        boxes: ``{image key: [{"finding": observation, "box": (x1, y1, x2, y2)}, ...]}`` for the
            names that map to an observation (keys from :func:`image_key`; an image annotated
            with no box has an empty list).
        unmapped_boxes: ``{image key: [{"label": name as written, "box": ...}]}`` for names
            that map to no observation.
        renamed: ``{name as written: observation}`` for names spelt differently from the
            observation (``"Pleural_Effusion": "Pleural Effusion"``).
        unmapped: ``{name as written: number of boxes}`` for names that map to nothing.
        invalid: ``(key, name, value)`` of every box that is not a proper box.
    """

    source: str
    boxes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unmapped_boxes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    invalid: list[tuple[str, str, Any]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(set(self.boxes) | set(self.unmapped_boxes))

    @property
    def n_boxes(self) -> int:
        return sum(len(v) for v in self.boxes.values()) + sum(len(v) for v in self.unmapped_boxes.values())

    def per_finding(self) -> dict[str, int]:
        """Number of (mapped) boxes per observation."""
        return dict(Counter(b["finding"] for items in self.boxes.values() for b in items))


def _box(value: Any) -> Box | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def parse_box_annotations(
    data: Any, *, source: str = "<memory>", vocabulary: tuple[str, ...] = CHEXPERT_OBSERVATIONS
) -> BoxAnnotations:
    """Parse the decoded JSON object (see the module docstring).

    Raises:
        DataFormatError: the object is not ``{key: {name: [box, ...]}}`` (names the key).
    """
    if not isinstance(data, dict):
        raise DataFormatError(f"{source}: expected a JSON object of image paths, got {type(data).__name__}")
    result = BoxAnnotations(source=source)
    unmapped: Counter[str] = Counter()
    for raw_key, entry in data.items():
        if not isinstance(entry, dict):
            raise DataFormatError(
                f"{source}: {raw_key!r}: expected an object of abnormality names, got {type(entry).__name__}"
            )
        key = image_key(raw_key)
        mapped_items = result.boxes.setdefault(key, [])
        for name, boxes in entry.items():
            if not isinstance(boxes, list):
                raise DataFormatError(
                    f"{source}: {raw_key!r} / {name!r}: expected a list of [xmin, ymin, xmax, ymax] boxes"
                )
            finding = normalise_finding(name, vocabulary)
            if finding is not None and finding != name:
                result.renamed[name] = finding
            for value in boxes:
                box = _box(value)
                if box is None:
                    result.invalid.append((key, name, value))
                    continue
                if finding is None:
                    unmapped[name] += 1
                    result.unmapped_boxes.setdefault(key, []).append({"label": name, "box": box})
                else:
                    mapped_items.append({"finding": finding, "box": box})
    result.unmapped = dict(unmapped)
    if result.unmapped:
        log.warning(
            "%s: %d box(es) under names that match no CheXpert observation, kept apart (not scored): %s",
            source, sum(unmapped.values()), ", ".join(f"{n!r} x{c}" for n, c in sorted(unmapped.items())),
        )
    if result.invalid:
        shown = ", ".join(f"{k} {n}: {v!r}" for k, n, v in result.invalid[:3])
        log.warning("%s: %d malformed box(es) not used (need xmin < xmax, ymin < ymax): %s%s",
                    source, len(result.invalid), shown, " ..." if len(result.invalid) > 3 else "")
    if result.renamed:
        log.info("%s: names normalised: %s", source,
                 ", ".join(f"{a!r} -> {b!r}" for a, b in sorted(result.renamed.items())))
    return result


def read_box_annotations(
    path: str | Path, *, vocabulary: tuple[str, ...] = CHEXPERT_OBSERVATIONS
) -> BoxAnnotations:
    """Read a HAM-style ``BBoxes.json`` (see the module docstring).

    Raises:
        DataFormatError: unreadable file, invalid JSON or a wrong structure.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataFormatError(f"cannot read box annotations {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON: {exc}") from None
    result = parse_box_annotations(data, source=str(path), vocabulary=vocabulary)
    log.info("%s: %d boxes on %d images", path, result.n_boxes, result.n_images)
    return result


def find_box_file(*folders: Path) -> Path | None:
    """The first ``BBoxes.json`` in ``folders`` or their ``Annotations/`` sub-folder."""
    for folder in folders:
        for sub in (Path("."), Path("Annotations")):
            for name in BOX_FILE_NAMES:
                candidate = Path(folder) / sub / name
                if candidate.is_file():
                    return candidate
    return None
