"""Turning model outputs and catalog rows into JSON: query findings, region boxes, result tiles
and the per-region match explanation.

Known findings (the archive's labels, from reports or annotations) and predicted findings (the
model's probabilities at the checkpoint's per-class thresholds, chosen on validation, or
:data:`FINDING_THRESHOLD` where it has none) are always separate fields, never merged. An
abnormality model (class list ``abnormal``) also gives ``abnormality`` (:func:`abnormality`):
its one probability, shown as ``abnormal: p``.

Region matching: for a query and a result with region embeddings ``q, r (18, R)`` (each row
L2-normalised), the region similarity is the row-wise cosine ``(q * r).sum(-1)`` ``(18,)``;
regions missing in either image (NaN box) are left out; the best three are reported by name.

DICOM UIDs and the PACS viewer link: every result and ``GET /images/<id>`` carry
``study_instance_uid``, ``series_instance_uid`` and ``sop_instance_uid`` as the catalog stores
them (keyed HMACs when the index was pseudonymised) and, with a viewer template configured
(``chextriev serve --viewer-url 'https://pacs.example/viewer?StudyInstanceUIDs={study_uid}'``),
``viewer_url`` built from it (:func:`viewer_link`). A pseudonymised index does not hold the real
UIDs, so no link can be built: ``viewer_url`` is then ``null`` and ``viewer_note`` says why.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from chextriev.vocab import REGIONS, is_abnormality

#: Probability from which a finding counts as predicted when the checkpoint has no threshold for it.
FINDING_THRESHOLD = 0.5
#: How many best-matching regions each result names.
TOP_REGIONS = 3


def jsonable(value: Any) -> Any:
    """Numpy arrays and scalars to JSON types; NaN and infinities to ``None``."""
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return None if math.isnan(number) or math.isinf(number) else number
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def findings_list(probabilities: np.ndarray, class_names: Sequence[str],
                  threshold: float | np.ndarray = FINDING_THRESHOLD) -> list[dict]:
    """``probabilities (C,)`` as ``[{name, probability, predicted}]``, most likely first;
    ``threshold``: one for all classes or ``(C,)`` per class."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    limits = np.broadcast_to(np.asarray(threshold, dtype=np.float64), np.shape(probabilities))
    return [{"name": class_names[i], "probability": round(float(probabilities[i]), 4),
             "predicted": bool(probabilities[i] >= limits[i])} for i in order]


def abnormality(probabilities: np.ndarray | None, class_names: Sequence[str],
                threshold: float | np.ndarray = FINDING_THRESHOLD) -> dict | None:
    """For the abnormality model (class list ``abnormal``: one output, any finding vs none),
    ``{"probability", "abnormal", "threshold", "label"}`` with ``label`` = ``"abnormal: 0.83"``,
    what the viewer shows; ``None`` for other models or unknown probabilities."""
    if probabilities is None or not is_abnormality(class_names):
        return None
    p = float(np.asarray(probabilities, dtype=np.float64).reshape(-1)[0])
    if math.isnan(p):
        return None
    limit = float(np.asarray(threshold, dtype=np.float64).reshape(-1)[0])
    return {"probability": round(p, 4), "abnormal": bool(p >= limit), "threshold": round(limit, 4),
            "label": f"abnormal: {p:.2f}"}


def boxes_list(boxes: np.ndarray | None) -> list[dict]:
    """``(18, 4)`` boxes as ``[{region, index, box: [x1, y1, x2, y2] | null}]``."""
    if boxes is None:
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(REGIONS), 4)
    return [{"region": name, "index": i,
             "box": None if np.isnan(boxes[i]).any() else [round(float(v), 1) for v in boxes[i]]}
            for i, name in enumerate(REGIONS)]


def region_matches(query: np.ndarray | None, result: np.ndarray | None,
                   query_boxes: np.ndarray | None = None, result_boxes: np.ndarray | None = None,
                   top: int = TOP_REGIONS) -> list[dict]:
    """The ``top`` regions where ``query (18, R)`` and ``result (18, R)`` agree most.

    Returns ``[{region, index, similarity}]`` best first; empty for global models (``None``).
    """
    if query is None or result is None:
        return []
    query = np.asarray(query, dtype=np.float32)
    result = np.asarray(result, dtype=np.float32)
    present = np.isfinite(query).all(axis=1) & np.isfinite(result).all(axis=1)
    present &= (np.abs(query).sum(axis=1) > 0) & (np.abs(result).sum(axis=1) > 0)
    for boxes in (query_boxes, result_boxes):
        if boxes is not None:
            present &= ~np.isnan(np.asarray(boxes, dtype=np.float32)).any(axis=1)
    similarity = np.where(present, (np.nan_to_num(query) * np.nan_to_num(result)).sum(axis=1), -np.inf)
    order = [int(i) for i in np.argsort(-similarity, kind="stable")[:top] if present[i]]
    return [{"region": REGIONS[i], "index": i, "similarity": round(float(similarity[i]), 4)} for i in order]


def as_boxes(value: Any) -> np.ndarray | None:
    """Stored boxes (``(18, 4)`` nested lists, ``None`` rows for missing regions) as a
    ``(18, 4)`` float32 array with NaN rows; ``None`` when none are stored."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.astype(np.float32).reshape(len(REGIONS), 4)
    rows = [[np.nan] * 4 if row is None else [np.nan if v is None else float(v) for v in row] for row in value]
    return np.asarray(rows, dtype=np.float32).reshape(len(REGIONS), 4)


def as_probabilities(value: Any, class_names: Sequence[str]) -> np.ndarray | None:
    """Stored probabilities (``{finding: p}`` or a sequence in class order) as ``(C,)``
    float32 in ``class_names`` order (absent findings are NaN); ``None`` when none are stored."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return np.array([float(value.get(name, np.nan)) for name in class_names], dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def predicted_findings(probabilities: np.ndarray | None, class_names: Sequence[str],
                       threshold: float | np.ndarray = FINDING_THRESHOLD) -> list[str] | None:
    """Names of the findings with ``probabilities (C,)`` at or above ``threshold``, most likely
    first; ``None`` when no probabilities are known."""
    if probabilities is None:
        return None
    return [item["name"] for item in findings_list(probabilities, class_names, threshold) if item["predicted"]]


#: What the catalog's ``finding`` filter tested for an image (``indexer.catalog``: the known
#: label when the image has labels, else the predicted probability at the class's threshold).
FINDING_FILTER_RULE = ("known label when the image has labels, else predicted probability >= the "
                       "checkpoint's threshold for the finding (chosen on validation, max F1; "
                       f"{FINDING_THRESHOLD} without one), as in the predicted findings shown")


def finding_filter_basis(row: Mapping[str, Any]) -> str:
    """``"known"`` or ``"predicted"``: which of the two the catalog's ``finding`` filter used for
    this image (the same test as ``indexer.catalog``: labels present or not)."""
    return "known" if row.get("known_findings") else "predicted"


def known_findings(row: Mapping[str, Any]) -> list[str] | None:
    """The archived image's known findings as names (``None`` when its labels are unknown)."""
    value = row.get("known_findings")
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [str(name) for name, flag in value.items() if flag]
    return [str(name) for name in value]


#: The placeholders a viewer URL template may use, and the catalog field each is filled from.
VIEWER_PLACEHOLDERS = {"study_uid": "study_instance_uid", "series_uid": "series_instance_uid",
                       "instance_uid": "sop_instance_uid"}
UID_FIELDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")
_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def viewer_placeholders(template: str) -> list[str]:
    """The placeholder names in ``template``; raises ``ValueError`` naming unknown ones."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"viewer URL template {template!r} is malformed: {error}") from None
    unknown = sorted(set(names) - set(VIEWER_PLACEHOLDERS))
    if unknown:
        raise ValueError(f"viewer URL template uses unknown placeholder(s) {unknown}; valid: "
                         + ", ".join("{" + name + "}" for name in VIEWER_PLACEHOLDERS))
    return names


def viewer_link(template: str | None, row: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(viewer URL, None)``, or ``(None, note)`` when no correct link can be built.

    No template: ``(None, None)``. The UIDs are URL-quoted into the template.
    """
    if not template:
        return None, None
    names = viewer_placeholders(template)
    if row.get("pseudonymised"):
        return None, ("the index stores pseudonymised DICOM UIDs, so no link to the PACS viewer "
                      "can be built")
    values = {}
    for name in names:
        value = row.get(VIEWER_PLACEHOLDERS[name])
        if not value:
            return None, f"this image has no DICOM {VIEWER_PLACEHOLDERS[name]} for the viewer link"
        if not _DICOM_UID.match(str(value)):
            return None, (f"the stored {VIEWER_PLACEHOLDERS[name]} is not a DICOM UID (a "
                          "pseudonymised index?), so no viewer link can be built")
        values[name] = quote(str(value), safe="")
    return template.format_map(values), None


def dicom_fields(row: Mapping[str, Any], viewer_template: str | None) -> dict:
    """The UIDs of a catalog row and, when a viewer template is set, ``viewer_url`` (and
    ``viewer_note`` when it cannot be built)."""
    out = {name: row.get(name) for name in UID_FIELDS}
    if viewer_template:
        url, note = viewer_link(viewer_template, row)
        out["viewer_url"] = url
        if note:
            out["viewer_note"] = note
    return out


def result_tile(rank: int, hit, row: Mapping[str, Any], *, matched_regions: list[dict],
                query_findings: set[str], class_names: Sequence[str], thumbnail_url: str, preview_url: str,
                image_url: str, finding_filter: str | None = None, viewer_template: str | None = None,
                threshold: float | np.ndarray = FINDING_THRESHOLD) -> dict:
    """One search result as JSON (no patient identifier other than the stored pseudonym).

    ``known_findings`` and ``predicted_findings`` stay apart; ``shared_findings`` are the known
    ones the query is predicted to have. With a ``finding_filter``, ``finding_filter`` says
    whether the image matched it by its known label or by its prediction. With a
    ``viewer_template``, the PACS link (:func:`dicom_fields`)."""
    known = known_findings(row)
    probabilities = as_probabilities(row.get("probabilities"), class_names)
    tile = {
        "rank": rank,
        "id": int(hit.image_id),
        "image_id": row.get("image_id"),
        "similarity": round(float(hit.score), 4),
        "study": row.get("study"),
        "patient": row.get("patient"),
        "view": row.get("view"),
        "sex": row.get("sex"),
        "age": jsonable(row.get("age")),
        "known_findings": known,
        "predicted_findings": predicted_findings(probabilities, class_names, threshold),
        "abnormality": abnormality(probabilities, class_names, threshold),
        "shared_findings": sorted(query_findings & set(known or ())),
        "matched_regions": matched_regions,
        "thumbnail_url": thumbnail_url,
        "preview_url": preview_url,
        "image_url": image_url,
        **dicom_fields(row, viewer_template),
    }
    if finding_filter:
        tile["finding_filter"] = {"finding": finding_filter, "matched_on": finding_filter_basis(row)}
    return tile


#: Catalog fields shown by ``GET /images/<id>`` (never the archive path: it can hold identifiers).
DETAIL_FIELDS = ("id", "image_id", "patient", "study", "view", "sex", "age", "study_date", "width", "height",
                 "format", "box_source")


def image_detail(row: Mapping[str, Any], class_names: Sequence[str],
                 viewer_template: str | None = None, threshold: float | np.ndarray = FINDING_THRESHOLD) -> dict:
    """``GET /images/<id>``: metadata, DICOM UIDs (and the viewer link), findings, predicted
    and region probabilities, boxes."""
    probabilities = as_probabilities(row.get("probabilities"), class_names)
    region_probabilities = row.get("region_probabilities")
    detail = {key: jsonable(row.get(key)) for key in DETAIL_FIELDS}
    detail.update(dicom_fields(row, viewer_template))
    detail["known_findings"] = known_findings(row)
    detail["class_names"] = list(class_names)
    detail["predicted_findings"] = [] if probabilities is None else findings_list(probabilities, class_names,
                                                                                  threshold)
    detail["abnormality"] = abnormality(probabilities, class_names, threshold)
    detail["region_probabilities"] = None if region_probabilities is None else [
        {"region": REGIONS[i], "index": i,
         "probabilities": {name: jsonable(round(float(p), 4)) for name, p in zip(class_names, row_p)}}
        for i, row_p in enumerate(np.asarray(region_probabilities, dtype=np.float64))]
    detail["boxes"] = boxes_list(as_boxes(row.get("boxes")))
    return detail
