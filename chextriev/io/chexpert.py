"""CheXpert (``CheXpert-v1.0/{train,valid}.csv`` and images) -> records.

Layout (the official release)::

    ROOT/CheXpert-v1.0/train.csv       Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>
    ROOT/CheXpert-v1.0/valid.csv       the official validation set (same columns)
    ROOT/CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg
    ROOT/CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg

``Path`` values are relative to ``ROOT`` (``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg``);
``ROOT`` or the ``CheXpert-v1.0`` folder itself may be given (any release folder name: the
first component of ``Path`` is replaced by the folder that holds the CSVs). An optional
``test.csv`` in the same format is read as the test split.

Observation cells hold ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or nothing
(not mentioned). What uncertain and blank cells become is configuration
(:class:`LabelPolicy`): ``uncertainty="ones"`` (U-Ones), ``"zeros"`` (U-Zeros) or ``"mask"``
(U-Ignore, the default: NaN in ``Record.labels``, which the training loss and the metrics
leave out); ``blank="zeros"`` (the CheXpert paper's reading, default) or ``"mask"``. The policy
is recorded in every record (``meta["label_policy"]``) so reports can state it.

Splits: ``valid.csv`` is ``validate``; ``test.csv`` (if present) is ``test``; without one, a
patient-disjoint ``test_fraction`` of the ``train.csv`` patients (by a hash of the patient id
and ``seed``) becomes ``test`` and the rest ``train``. A patient in two CSVs raises.

Box annotations (HAM's ``BBoxes.json``, see :mod:`chextriev.io.chexpert_boxes`) are attached as
``record.meta["lesion_boxes"] = [{"finding": observation, "box": (x1, y1, x2, y2)}]`` in pixels
of the image on disk, like the NIH reader. The boxes are in original pixels: they are attached
only when they fit inside the image on disk (its size read from the header); otherwise (e.g. the
downscaled ``-small`` release) the mismatch is reported, not hidden.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from chextriev.errors import DataFormatError, ImageReadError, UnknownNameError
from chextriev.io.chexpert_boxes import (
    BoxAnnotations,
    find_box_file,
    image_key,
    read_box_annotations,
)
from chextriev.io.imagenome import resolve_class_names
from chextriev.io.images import image_size
from chextriev.io.tables import cell, find_table, int_or_none, read_csv
from chextriev.records import Record
from chextriev.vocab import CHEXPERT_OBSERVATIONS, equivalent_findings, is_abnormality

log = logging.getLogger(__name__)

UNCERTAINTY_POLICIES: tuple[str, ...] = ("ones", "zeros", "mask")
BLANK_POLICIES: tuple[str, ...] = ("zeros", "mask")
#: CSV files and the split they give.
CSV_SPLITS: tuple[tuple[str, str], ...] = (("train.csv", "train"), ("valid.csv", "validate"), ("test.csv", "test"))
METADATA_COLUMNS: tuple[str, ...] = ("Sex", "Age", "Frontal/Lateral", "AP/PA")
#: Box coordinates may exceed the image by this many pixels (rounding in the annotation tool).
BOX_TOLERANCE = 2.0

_RAW_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


@dataclass(frozen=True)
class LabelPolicy:
    """What uncertain (``-1.0``) and not-mentioned (blank) CheXpert cells become."""

    uncertainty: str = "mask"
    blank: str = "zeros"

    def __post_init__(self) -> None:
        if self.uncertainty not in UNCERTAINTY_POLICIES:
            raise UnknownNameError("uncertainty policy", self.uncertainty, UNCERTAINTY_POLICIES)
        if self.blank not in BLANK_POLICIES:
            raise UnknownNameError("blank-label policy", self.blank, BLANK_POLICIES)

    def value(self, raw: float | None) -> float:
        """1.0, 0.0 or NaN (masked) for a raw cell value (1.0, 0.0, -1.0 or ``None``)."""
        if raw is None:
            return 0.0 if self.blank == "zeros" else math.nan
        if raw < 0:
            return {"ones": 1.0, "zeros": 0.0, "mask": math.nan}[self.uncertainty]
        return float(raw)

    def describe(self) -> str:
        """One sentence for reports."""
        uncertain = {
            "ones": "1 (U-Ones)",
            "zeros": "0 (U-Zeros)",
            "mask": "masked (U-Ignore: left out of the loss and the metrics)",
        }[self.uncertainty]
        blank = "0" if self.blank == "zeros" else "masked"
        return f"CheXpert labels: uncertain (-1) -> {uncertain}; not mentioned (blank) -> {blank}"


def parse_cells(frame: Any, path: Path) -> np.ndarray:
    """The 14 observation columns of a CSV frame (strings) -> ``(N, 14)`` float: 1.0, 0.0,
    -1.0, NaN for blank.

    Raises:
        DataFormatError: any other value (names the file, line and column).
    """
    out = np.empty((len(frame), len(CHEXPERT_OBSERVATIONS)), dtype=np.float64)
    for j, column in enumerate(CHEXPERT_OBSERVATIONS):
        text = frame[column].astype(str).str.strip()
        values = text.map(_RAW_VALUES).to_numpy(dtype=np.float64, na_value=np.nan)
        for i in np.flatnonzero(np.isnan(values) & (text != "").to_numpy()):  # other spellings ("1.000")
            try:
                number = float(text.iloc[i])
            except ValueError:
                number = math.nan
            if number not in (1.0, 0.0, -1.0):
                raise DataFormatError(
                    f"{path}:{i + 2} column {column!r}: expected 1.0, 0.0, -1.0 or blank, got {text.iloc[i]!r}"
                )
            values[i] = number
        out[:, j] = values
    return out


def is_chexpert_csv(path: Path) -> bool:
    """True when ``path``'s header has ``Path`` and the 14 observation columns."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = fh.readline()
    except OSError:
        return False
    columns = [c.strip().strip('"') for c in header.rstrip("\r\n").split(",")]
    return "Path" in columns and all(o in columns for o in CHEXPERT_OBSERVATIONS)


def find_csv_folder(root: str | Path) -> Path | None:
    """The folder holding ``train.csv`` / ``valid.csv`` in CheXpert format: ``root`` or a
    sub-folder one level down (``root/CheXpert-v1.0``)."""
    root = Path(root)
    for name in ("valid.csv", "train.csv"):
        path = find_table(root, name, depth=1)
        if path is not None and path.suffix == ".csv" and is_chexpert_csv(path):
            return path.parent
    return None


def is_chexpert_layout(root: str | Path) -> bool:
    """True when ``root`` (or ``root/CheXpert-v1.0``) holds a CheXpert ``train.csv``/``valid.csv``."""
    return find_csv_folder(root) is not None


def _fraction(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"chexpert:{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _class_sources(names: tuple[str, ...]) -> list[list[int]]:
    """For each target class, the indices of the CheXpert observations that mean it."""
    out = []
    for name in names:
        links = equivalent_findings(name)
        out.append([i for i, obs in enumerate(CHEXPERT_OBSERVATIONS) if obs in links])
    return out


def abnormal_label(no_finding: float | None, policy: LabelPolicy) -> float:
    """The abnormality label from the row's own ``No Finding`` cell: 0 when it is 1.0, 1 when it
    is 0.0 or blank (CheXpert's labeler sets No Finding only when no pathology is positive or
    uncertain, and leaves it blank otherwise), and for an uncertain ``-1.0`` the uncertainty
    policy's reading of "no finding" (U-Ones: normal, U-Zeros: abnormal, mask: NaN)."""
    if no_finding is None or no_finding == 0.0:
        return 1.0
    if no_finding > 0:
        return 0.0
    return 1.0 - policy.value(no_finding)  # NaN stays NaN


def labels_for(raw: Sequence[float | None], names: tuple[str, ...], policy: LabelPolicy,
               sources: list[list[int]] | None = None) -> list[float]:
    """Raw observation values (14, CheXpert order) -> labels over ``names`` under ``policy``.

    A target class takes the OR of the observations that mean it: 1 if any is 1, else NaN if
    any is masked, else 0. A class that no observation means (e.g. ImaGenome's fluid
    overload) is "not mentioned": the blank policy's value. The abnormality list
    (``"abnormal"``) is :func:`abnormal_label` of the ``No Finding`` cell.
    """
    if is_abnormality(names):
        return [abnormal_label(raw[CHEXPERT_OBSERVATIONS.index("No Finding")], policy)]
    sources = _class_sources(names) if sources is None else sources
    values = [policy.value(v) for v in raw]
    out = []
    for idx in sources:
        if not idx:
            out.append(policy.value(None))
            continue
        picked = [values[i] for i in idx]
        if any(v == 1.0 for v in picked):
            out.append(1.0)
        elif any(math.isnan(v) for v in picked):
            out.append(math.nan)
        else:
            out.append(0.0)
    return out


def _existing_files(folder: Path) -> set[str]:
    """Image keys (``train/patient.../view1_frontal.jpg``) of the files under ``folder``."""
    found: set[str] = set()
    for split in ("train", "valid", "test"):
        base = folder / split
        if not base.is_dir():
            continue
        for dirpath, _, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(folder).as_posix()
            for fn in filenames:
                if fn.lower().endswith((".jpg", ".jpeg", ".png", ".dcm")):
                    found.add(f"{rel}/{fn}")
    return found


def _view(frontal_lateral: str | None, ap_pa: str | None) -> str | None:
    """``"AP"``/``"PA"``/... for frontal images (``"FRONTAL"`` without AP/PA), ``"LATERAL"``."""
    if frontal_lateral and frontal_lateral.lower().startswith("lat"):
        return "LATERAL"
    if ap_pa:
        return ap_pa.upper()
    return "FRONTAL" if frontal_lateral else None


def _attach_boxes(records: list[Record], annotations: BoxAnnotations, report: dict[str, Any]) -> None:
    """Put the annotations' boxes into ``meta["lesion_boxes"]`` of the records they belong to."""
    by_key = {r.meta["image_key"]: r for r in records}
    attached = 0
    misfit: list[dict[str, Any]] = []
    for key in sorted(set(annotations.boxes) | set(annotations.unmapped_boxes)):
        record = by_key.get(key)
        if record is None:
            continue
        mapped = annotations.boxes.get(key, [])
        unmapped = annotations.unmapped_boxes.get(key, [])
        boxes = [b["box"] for b in mapped + unmapped]
        if boxes:
            try:
                size = image_size(record.source)
            except ImageReadError as exc:
                misfit.append({"image": key, "reason": str(exc)})
                continue
            height, width = size
            x_max = max(b[2] for b in boxes)
            y_max = max(b[3] for b in boxes)
            if x_max > width + BOX_TOLERANCE or y_max > height + BOX_TOLERANCE:
                misfit.append({"image": key, "reason": (
                    f"boxes reach ({x_max:.0f}, {y_max:.0f}) but the image is {width}x{height}: "
                    "the boxes are in original pixels and this image is not the original size")})
                continue
            record.image_size = size
        record.meta["lesion_boxes"] = [{"finding": b["finding"], "box": b["box"]} for b in mapped]
        if unmapped:
            record.meta["unmapped_lesion_boxes"] = [{"label": b["label"], "box": b["box"]} for b in unmapped]
        attached += 1
    annotated = set(annotations.boxes) | set(annotations.unmapped_boxes)
    not_read = sorted(annotated - set(by_key))
    report.update({
        "box_file": annotations.source,
        "box_images": annotations.n_images,
        "box_images_attached": attached,
        "box_images_not_read": not_read,
        "box_images_misfit": misfit,
        "box_names_renamed": dict(annotations.renamed),
        "box_names_unmapped": dict(annotations.unmapped),
        "boxes_invalid": list(annotations.invalid),
    })
    if not_read:
        log.warning("%s: %d annotated image(s) are not among the records read (lateral views skipped, "
                    "or not in the CSVs / not on disk), e.g. %s", annotations.source, len(not_read), not_read[0])
    if misfit:
        log.warning("%s: boxes of %d image(s) not attached: %s", annotations.source, len(misfit), misfit[0]["reason"])


def read_chexpert(
    root: str | Path,
    class_list: str | Sequence[str] = "chexpert",
    *,
    uncertainty: str = "mask",
    blank: str = "zeros",
    boxes: str | Path | None = "auto",
    frontal_only: bool = True,
    only_existing: bool = True,
    test_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    report: dict[str, Any] | None = None,
) -> list[Record]:
    """Read a CheXpert release into records.

    Args:
        root: the folder holding ``CheXpert-v1.0/`` (what ``Path`` is relative to), or that
            folder itself.
        class_list: ``"chexpert"`` (the 14 observations), ``"chexpert5"`` (the 5 competition
            observations) or another list (``"imagenome"``, ``"nih"``, names): classes are
            filled from the observations that mean them
            (:func:`chextriev.vocab.equivalent_findings`); positive observations without a
            class are listed in ``meta["unmapped_findings"]``. ``"abnormal"``: from the
            ``No Finding`` column (:func:`abnormal_label`).
        uncertainty: ``"ones"``, ``"zeros"`` or ``"mask"`` (see :class:`LabelPolicy`).
        blank: ``"zeros"`` or ``"mask"``.
        boxes: a HAM-style ``BBoxes.json``; ``"auto"`` looks for ``BBoxes.json`` in ``root``,
            the CSV folder and their ``Annotations/``; ``None`` reads no boxes.
        frontal_only: skip lateral views (counted in the log and ``report``).
        only_existing: keep only rows whose image is on disk.
        test_fraction: share of the ``train.csv`` patients held out as ``test`` when there is no
            ``test.csv`` (0 keeps them all in ``train``).
        seed: seed of that patient hash.
        progress: show a tqdm bar.
        report: if given, filled with what was skipped and why (counts, box-file findings:
            ``box_names_unmapped``, ``box_images_not_read``, ``box_images_misfit``, ...).

    Returns:
        records with ``image_id`` = image key without suffix
        (``train/patient00001/study1/view1_frontal``), ``patient_id`` (``patient00001``),
        ``study_id`` (``patient00001/study1``), ``view`` (``AP``/``PA``/``LATERAL``...),
        ``labels (C,)`` (NaN = masked), ``split``, and ``meta``: ``dataset``, ``path`` (the CSV
        value), ``image_key``, ``sex``, ``age``, ``frontal_lateral``, ``ap_pa``,
        ``raw_labels`` ({observation: 1.0 / 0.0 / -1.0 / None}), ``label_policy``,
        ``lesion_boxes``.

    Raises:
        DataFormatError: no CheXpert CSV, a bad cell, a patient in two CSVs, or no image on disk.
        UnknownNameError: an unknown policy or class list.
    """
    policy = LabelPolicy(uncertainty, blank)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    root = Path(root)
    names = resolve_class_names(class_list)
    sources = _class_sources(names)
    mapped_observations = {i for idx in sources for i in idx}
    folder = find_csv_folder(root)
    if folder is None:
        raise DataFormatError(
            f"{root}: no CheXpert train.csv / valid.csv (with Path and the 14 observation columns) "
            "here or in a sub-folder such as CheXpert-v1.0/"
        )
    csvs = [(folder / name, split) for name, split in CSV_SPLITS if (folder / name).is_file()]
    has_test = any(split == "test" for _, split in csvs)
    existing = _existing_files(folder) if only_existing else None
    info: dict[str, Any] = {"folder": str(folder), "label_policy": policy.describe(), "rows": 0,
                            "skipped_lateral": 0, "missing_files": 0}
    patients: dict[str, str] = {}
    held_out: dict[str, bool] = {}  # train.csv patient -> in the held-out test split
    records: list[Record] = []
    direct = tuple(names) == CHEXPERT_OBSERVATIONS
    policy_text = policy.describe()
    origin = {path: f"chexpert:{path}" for path, _ in csvs}
    for path, csv_split in csvs:
        frame = read_csv(path, required=("Path", *CHEXPERT_OBSERVATIONS))
        present = [c for c in METADATA_COLUMNS if c in frame.columns]
        if len(present) < len(METADATA_COLUMNS):
            log.warning("%s: no column(s) %s", path, ", ".join(sorted(set(METADATA_COLUMNS) - set(present))))
        raw_values = parse_cells(frame, path)  # (N, 14) float: 1, 0, -1, NaN = blank
        columns = {c: frame[c].tolist() if c in frame.columns else [""] * len(frame) for c in ("Path", *METADATA_COLUMNS)}
        info["rows"] += len(frame)
        for n in tqdm(range(len(frame)), desc=path.name, unit="row", disable=not progress, leave=False):
            lineno = n + 2
            csv_path = columns["Path"][n].strip()
            if not csv_path:
                raise DataFormatError(f"{path}:{lineno}: empty Path")
            key = image_key(csv_path)
            parts = key.split("/")
            if len(parts) < 4:
                raise DataFormatError(
                    f"{path}:{lineno}: Path {csv_path!r} is not <split>/patient<N>/study<N>/<view>.jpg"
                )
            patient, study = parts[1], f"{parts[1]}/{parts[2]}"
            split = csv_split
            if csv_split == "train" and not has_test and test_fraction > 0:
                if patient not in held_out:
                    held_out[patient] = _fraction(patient, seed) < test_fraction
                split = "test" if held_out[patient] else "train"
            other = patients.setdefault(patient, csv_split)
            if other != csv_split:
                raise DataFormatError(
                    f"{path}:{lineno}: patient {patient} is also in {other}.csv: the CheXpert splits "
                    "must be patient-disjoint"
                )
            frontal_lateral = cell(columns["Frontal/Lateral"][n])
            if frontal_only and frontal_lateral and frontal_lateral.lower().startswith("lat"):
                info["skipped_lateral"] += 1
                continue
            if existing is not None and key not in existing:
                info["missing_files"] += 1
                continue
            raw = [None if math.isnan(v) else v for v in raw_values[n].tolist()]
            labels = [policy.value(v) for v in raw] if direct else labels_for(raw, names, policy, sources)
            ap_pa = cell(columns["AP/PA"][n])
            meta: dict[str, Any] = {
                "dataset": "chexpert",
                "path": csv_path,
                "image_key": key,
                "sex": cell(columns["Sex"][n]),
                "age": int_or_none(columns["Age"][n]),
                "frontal_lateral": frontal_lateral,
                "ap_pa": ap_pa,
                "raw_labels": dict(zip(CHEXPERT_OBSERVATIONS, raw)),
                "label_policy": policy_text,
                "lesion_boxes": [],
            }
            if not direct and not is_abnormality(names):
                unmapped = [o for i, (o, v) in enumerate(zip(CHEXPERT_OBSERVATIONS, raw))
                            if v == 1.0 and o != "No Finding" and i not in mapped_observations]
                if unmapped:
                    meta["unmapped_findings"] = unmapped
            records.append(Record(
                source=folder / key,
                image_id=key.rsplit(".", 1)[0],
                patient_id=patient,
                study_id=study,
                view=_view(frontal_lateral, ap_pa),
                class_names=names,
                labels=labels,
                origin=origin[path],
                split=split,
                meta=meta,
            ))
    if not csvs:
        raise DataFormatError(f"{folder}: no train.csv, valid.csv or test.csv")
    if not records:
        raise DataFormatError(
            f"{folder}: the CSVs list {info['rows']} images but none was read "
            f"({info['skipped_lateral']} lateral skipped, {info['missing_files']} not on disk; "
            "pass only_existing=False to read the labels alone)"
        )
    if info["missing_files"]:
        log.warning("%s: %d image(s) listed in the CSVs are not on disk (skipped)", folder, info["missing_files"])
    box_path = None
    if boxes == "auto":
        box_path = find_box_file(root, folder)
    elif boxes is not None:
        box_path = Path(boxes)
    if box_path is not None:
        _attach_boxes(records, read_box_annotations(box_path), info)
    splits = {s: sum(r.split == s for r in records) for s in ("train", "validate", "test")}
    info["splits"] = splits
    log.info("%s: %d CheXpert images (%s; %d lateral skipped, %d with boxes); %s", folder, len(records),
             ", ".join(f"{k} {v}" for k, v in splits.items()), info["skipped_lateral"],
             sum(bool(r.meta["lesion_boxes"]) for r in records), policy.describe())
    if report is not None:
        report.update(info)
    return records
