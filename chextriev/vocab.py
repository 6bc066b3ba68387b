"""The vocabulary: 18 anatomical regions (node order everywhere) and the finding class lists.

The class list a model uses is configuration (``class_list("imagenome")``, ``"nih"``,
``"chexpert"``, the benchmark subsets ``"nih8"`` and ``"chexpert5"``, or ``"abnormal"``, the
one-output abnormality model); an unknown name raises
:class:`~chextriev.errors.UnknownNameError` listing the valid ones. Readers map their labels to
any list the same way (a subset takes the columns it names; ``abnormal`` comes from each
dataset's own normal flag, see :data:`ABNORMAL`). Findings that mean the same thing in two vocabularies are linked by the
``*_TO_*`` tables; :func:`equivalent_findings` follows them in both directions.
"""

from __future__ import annotations

import numbers
import re
from collections import deque

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

#: The 14 CheXpert observations, spelt and ordered as the columns of ``train.csv``.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The 8 ChestX-ray8 diseases, the NIH findings that carry boxes (Wang et al., CVPR 2017): the
#: benchmark subset of the NIH literature.
NIH8_FINDINGS: tuple[str, ...] = NIH_FINDINGS[:8]

#: The 5 CheXpert competition observations (Irvin et al., AAAI 2019), in the paper's order.
CHEXPERT5_OBSERVATIONS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

#: The abnormality model's one class (X_RAY's binary normal-vs-abnormal model): 1 when the image
#: holds any finding, 0 when the dataset marks it normal. Each reader takes it from its dataset's
#: own flag: NIH ``No Finding``, CheXpert's ``No Finding`` column, ImaGenome and the synthetic
#: archive no positive finding, a manifest's ``No Finding`` / empty labels (or all-zero columns).
ABNORMAL = "abnormal"
ABNORMAL_CLASSES: tuple[str, ...] = (ABNORMAL,)

CLASS_LISTS: dict[str, tuple[str, ...]] = {
    "imagenome": IMAGENOME_FINDINGS,
    "nih": NIH_FINDINGS,
    "chexpert": CHEXPERT_OBSERVATIONS,
    "nih8": NIH8_FINDINGS,
    "chexpert5": CHEXPERT5_OBSERVATIONS,
    "abnormal": ABNORMAL_CLASSES,
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


#: CheXpert observations that correspond to an ImaGenome finding (the others have none:
#: No Finding, Enlarged Cardiomediastinum, Lung Lesion, Pleural Other, Fracture, Support Devices).
CHEXPERT_TO_IMAGENOME: dict[str, str] = {
    "Lung Opacity": "lung opacity",
    "Pleural Effusion": "pleural effusion",
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "enlarged cardiac silhouette",
    "Edema": "pulmonary edema/hazy opacity",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
}

#: CheXpert observations that correspond to an NIH finding.
CHEXPERT_TO_NIH: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}

#: Spellings of CheXpert observations that :func:`finding_key` alone does not resolve (keys
#: are lower case with ``_``/``-`` as spaces). HAM's box JSON writes ``Pleural_Effusion``,
#: ``Enlarged_Cardiomediastinum`` and ``edema`` beside ``Edema`` (resolved by the key) and
#: ``Enlarg_Cardiomediastinum`` (an alias); the CheXpert paper's tables say
#: ``Airspace Opacity`` for ``Lung Opacity``; NIH-style ``Effusion`` is ``Pleural Effusion``.
CHEXPERT_ALIASES: dict[str, str] = {
    "enlarg cardiomediastinum": "Enlarged Cardiomediastinum",
    "airspace opacity": "Lung Opacity",
    "effusion": "Pleural Effusion",
}

#: Cross-vocabulary tables followed by :func:`equivalent_findings`.
FINDING_EQUIVALENCES: tuple[dict[str, str], ...] = (NIH_TO_IMAGENOME, CHEXPERT_TO_IMAGENOME, CHEXPERT_TO_NIH)


def finding_key(name: str) -> str:
    """A spelling-insensitive key: ``" Pleural_Effusion "`` -> ``"pleural effusion"``."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def normalise_finding(
    name: str, vocabulary: tuple[str, ...] = CHEXPERT_OBSERVATIONS, aliases: dict[str, str] | None = None
) -> str | None:
    """The name of ``vocabulary`` that ``name`` means, or ``None`` when it maps to none.

    Case, underscores, hyphens and repeated spaces are ignored; ``aliases`` (default
    :data:`CHEXPERT_ALIASES` for the CheXpert vocabulary) cover other spellings.
    ``normalise_finding("Enlarg_Cardiomediastinum") == "Enlarged Cardiomediastinum"``.
    """
    if aliases is None:
        aliases = CHEXPERT_ALIASES if vocabulary == CHEXPERT_OBSERVATIONS else {}
    key = finding_key(name)
    by_key = {finding_key(v): v for v in vocabulary}
    if key in by_key:
        return by_key[key]
    target = aliases.get(key)
    return target if target in vocabulary else None


def equivalent_findings(name: str) -> list[str]:
    """``name`` and every finding linked to it by :data:`FINDING_EQUIVALENCES`, nearest first.

    ``equivalent_findings("Pleural Effusion") == ["Pleural Effusion", "pleural effusion",
    "Effusion"]``: the CheXpert, ImaGenome and NIH names of one finding.
    """
    links: dict[str, list[str]] = {}
    for table in FINDING_EQUIVALENCES:
        for a, b in table.items():
            links.setdefault(a, []).append(b)
            links.setdefault(b, []).append(a)
    seen = [name]
    queue = deque([name])
    while queue:
        for other in links.get(queue.popleft(), ()):
            if other not in seen:
                seen.append(other)
                queue.append(other)
    return seen


def class_list(name: str) -> tuple[str, ...]:
    """The finding names of class list ``name`` (a key of :data:`CLASS_LISTS`: "imagenome",
    "nih", "chexpert", "nih8", "chexpert5", "abnormal")."""
    try:
        return CLASS_LISTS[name]
    except KeyError:
        raise UnknownNameError("class list", name, CLASS_LISTS) from None


def class_list_name(names) -> str | None:
    """The name of the class list whose findings are ``names`` (in order), else ``None``."""
    return next((name for name, listed in CLASS_LISTS.items() if tuple(names) == listed), None)


def is_abnormality(names) -> bool:
    """True when ``names`` is the abnormality model's class list (:data:`ABNORMAL_CLASSES`)."""
    return tuple(names) == ABNORMAL_CLASSES


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


def class_index(class_names: tuple[str, ...], finding: str | int) -> int:
    """Index of ``finding`` (name or index) in ``class_names``; unknown ones list the valid names."""
    if isinstance(finding, numbers.Integral) and not isinstance(finding, bool):
        if 0 <= int(finding) < len(class_names):
            return int(finding)
        raise UnknownNameError("finding index", str(finding), [f"{i} ({n})" for i, n in enumerate(class_names)])
    return finding_index(tuple(class_names), str(finding))
