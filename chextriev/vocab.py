"""The vocabulary: 18 anatomical regions (node order everywhere) and the finding class lists.

The class list a model uses is configuration (``class_list("imagenome")`` or ``"nih"``);
an unknown name raises :class:`~chextriev.errors.UnknownNameError` listing the valid ones.
"""

from __future__ import annotations

from chextriev.errors import UnknownNameError

#: Chest ImaGenome region names in node order (SPEC section 2).
REGIONS: tuple[str, ...] = (
    "right lung",
    "right apical zone",
    "right upper lung zone",
    "right mid lung zone",
    "right lower lung zone",
    "right hilar structures",
    "right costophrenic angle",
    "left lung",
    "left apical zone",
    "left upper lung zone",
    "left mid lung zone",
    "left lower lung zone",
    "left hilar structures",
    "left costophrenic angle",
    "mediastinum",
    "upper mediastinum",
    "cardiac silhouette",
    "trachea",
)
#: Patient side of each region: R(ight), L(eft) or M(idline).
REGION_SIDES: tuple[str, ...] = ("R",) * 7 + ("L",) * 7 + ("M",) * 4
NUM_REGIONS = len(REGIONS)

#: The 9 Chest ImaGenome findings used by CheXtriev (no "no finding" class).
IMAGENOME_FINDINGS: tuple[str, ...] = (
    "lung opacity",
    "pleural effusion",
    "atelectasis",
    "enlarged cardiac silhouette",
    "pulmonary edema/hazy opacity",
    "pneumothorax",
    "consolidation",
    "fluid overload/heart failure",
    "pneumonia",
)

#: The 14 NIH ChestX-ray14 findings, in the official order.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "imagenome": IMAGENOME_FINDINGS,
    "nih": NIH_FINDINGS,
}

#: NIH findings that correspond to an ImaGenome finding (used to evaluate ImaGenome-class
#: models on NIH boxes). Findings without a counterpart are absent.
NIH_TO_IMAGENOME: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Effusion": "pleural effusion",
    "Infiltration": "lung opacity",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "pulmonary edema/hazy opacity",
}


def class_list(name: str) -> tuple[str, ...]:
    """The finding names of class list ``name`` ("imagenome" or "nih")."""
    try:
        return CLASS_LISTS[name]
    except KeyError:
        raise UnknownNameError("class list", name, CLASS_LISTS) from None


def region_index(name: str) -> int:
    """Node index of a region name (exact Chest ImaGenome spelling)."""
    try:
        return REGIONS.index(name)
    except ValueError:
        raise UnknownNameError("region", name, REGIONS) from None


def finding_index(classes: tuple[str, ...] | list[str], name: str) -> int:
    """Index of finding ``name`` in ``classes``; unknown names list the valid ones."""
    try:
        return list(classes).index(name)
    except ValueError:
        raise UnknownNameError("finding", name, classes) from None
