"""Chest ImaGenome scene-graph JSON (SPEC section 3) for one synthetic image.

``objects``: one per drawn region, ``bbox_name``, ``original_x1..y2`` (original pixels) and
``x1..y2`` (the 224 grid). ``attributes``: one per region mentioned, ``attributes`` a list of
lists of ``"<category>|<yes|no>|<finding>"`` strings aligned with ``phrases``. Negative
(``no``) statements are included, sometimes for a finding that is present elsewhere in the
same region's list (the reader must let any ``yes`` win).
"""

from __future__ import annotations

import numpy as np

from chextriev.vocab import IMAGENOME_FINDINGS, REGIONS

CATEGORY = {
    "fluid overload/heart failure": "disease",
    "pneumonia": "disease",
}
NEGATABLE = ("pneumothorax", "pleural effusion", "consolidation", "pulmonary edema/hazy opacity")


def _category(finding: str) -> str:
    return CATEGORY.get(finding, "anatomicalfinding")


def _grid(value: float, size: int) -> float:
    return round(float(value) * 224.0 / size, 2)


def build_scene_graph(*, image_id: str, patient_id: str, study_id: str, view: str, sex: str, age: int,
                      study_date: str, boxes: np.ndarray, region_labels: np.ndarray, size: int,
                      rng: np.random.Generator) -> dict:
    """The scene graph dict for one image (boxes (18,4) NaN = region absent; labels (18,9))."""
    objects = []
    for r, name in enumerate(REGIONS):
        if np.isnan(boxes[r, 0]):
            continue
        x1, y1, x2, y2 = (float(b) for b in boxes[r])
        objects.append({
            "object_id": f"{image_id}_{name}",
            "x1": _grid(x1, size), "y1": _grid(y1, size), "x2": _grid(x2, size), "y2": _grid(y2, size),
            "width": _grid(x2 - x1, size), "height": _grid(y2 - y1, size),
            "bbox_name": name, "synsets": [], "name": name.title(),
            "original_x1": round(x1), "original_y1": round(y1),
            "original_x2": round(x2), "original_y2": round(y2),
            "original_width": round(x2 - x1), "original_height": round(y2 - y1),
        })
    attributes = []
    for r, name in enumerate(REGIONS):
        if np.isnan(boxes[r, 0]):
            continue
        groups, phrases = [], []
        positives = [IMAGENOME_FINDINGS[f] for f in np.flatnonzero(region_labels[r] > 0)]
        if positives:
            strings = [f"{_category(f)}|yes|{f}" for f in positives] + ["nlp|yes|abnormal"]
            groups.append(strings)
            phrases.append(f"There is {' and '.join(positives)} in the {name}.")
            # a later sentence denying a larger/new form of a present finding
            for f in positives:
                if f in NEGATABLE and rng.random() < 0.3:
                    groups.append([f"{_category(f)}|no|{f}"])
                    phrases.append(f"No large {f} in the {name}.")
        elif rng.random() < 0.25:
            f = NEGATABLE[int(rng.integers(len(NEGATABLE)))]
            groups.append([f"{_category(f)}|no|{f}", "nlp|yes|normal"])
            phrases.append(f"No {f}.")
        if groups:
            attributes.append({
                "bbox_name": name, "synsets": [], "name": name.title(),
                "attributes": groups, "attributes_ids": [[] for _ in groups],
                "phrases": phrases, "phrase_IDs": [f"{study_id}|{k}" for k in range(len(phrases))],
                "sections": ["finalreport"] * len(phrases),
                "comparison_cues": [[] for _ in groups], "temporal_cues": [[] for _ in groups],
                "severity_cues": [[] for _ in groups], "texture_cues": [[] for _ in groups],
                "object_id": f"{image_id}_{name}",
            })
    return {
        "image_id": image_id,
        "viewpoint": view,
        "patient_id": int(patient_id),
        "study_id": int(study_id),
        "gender": sex,
        "age_decile": f"{(age // 10) * 10}-{(age // 10) * 10 + 10} years",
        "reason_for_exam": "synthetic phantom",
        "StudyOrder": None,
        "StudyDateTime": f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]} 00:00:00 UTC",
        "objects": objects,
        "attributes": attributes,
        "relationships": [],
    }
