"""The catalog fields of a record, normalised once for every reader and consumer.

* :func:`view_decision`, THE view rule: frontal radiographs (``PA``, ``AP``) are indexed; an
  unknown view (a PNG without a manifest, a DICOM without ``ViewPosition``) is **assumed
  frontal**; any other known view (``LL``, ``LATERAL``, ...) is skipped with the reason.
* :func:`normalise_sex`: ``"M"``, ``"F"``, ``"O"`` or ``None`` from DICOM ``PatientSex`` or a
  manifest's ``sex`` (``male``, ``f``, ...).
* :func:`normalise_age`: years as a float from a DICOM Age String (``"045Y"``, ``"006M"``) or a
  plain number; ``None`` when empty or unreadable.
"""

from __future__ import annotations

import math
from typing import Any

FRONTAL_VIEWS = frozenset({"PA", "AP", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR", "AP AXIAL"})

__all__ = ["FRONTAL_VIEWS", "normalise_age", "normalise_sex", "view_decision"]


def view_decision(view: str | None) -> tuple[str | None, str | None]:
    """``(normalised view or None, skip reason or None)`` for a view string.

    ``PA``/``AP`` (and their spelled-out forms) are kept; an empty or missing view is assumed
    frontal (``(None, None)``); any other view gives a reason to skip the image.
    """
    if view is None or not str(view).strip():
        return None, None
    text = str(view).strip().upper()
    if text in FRONTAL_VIEWS:
        if text.startswith("POSTERO"):
            return "PA", None
        if text.startswith("ANTERO"):
            return "AP", None
        return text, None
    return text, f"non-frontal view {text} (only PA/AP are indexed)"


def normalise_sex(value: Any) -> str | None:
    """``"M"`` / ``"F"`` / ``"O"`` from ``M``, ``male``, ``F``, ``female``, ``O``, ``other``."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text:
        return None
    return text[0] if text[0] in "MFO" else None


def normalise_age(value: Any) -> float | None:
    """Years from ``"045Y"``, ``"006M"``, ``"003W"``, ``"010D"``, ``61``, ``"61.5"``; else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    text = str(value).strip().upper()
    if not text:
        return None
    unit = text[-1] if text[-1].isalpha() else "Y"
    number = text[:-1] if text[-1].isalpha() else text
    try:
        n = float(number)
    except ValueError:
        return None
    divisor = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}.get(unit)
    return None if divisor is None else n / divisor
