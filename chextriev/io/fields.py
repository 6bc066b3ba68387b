"""The catalog fields of a record, normalised once for every reader and consumer.

* :func:`view_decision`, THE view rule: frontal radiographs (``PA``, ``AP``) are indexed; an
  unknown view (a PNG without a manifest, a DICOM without ``ViewPosition``) is **assumed
  frontal**; any other known view (``LL``, ``LATERAL``, ...) is skipped with the reason.
* :func:`normalise_sex`: ``"M"``, ``"F"``, ``"O"`` or ``None`` from DICOM ``PatientSex`` or a
  manifest's ``sex`` (``male``, ``f``, ...).
* :func:`normalise_age`: years as a float from a DICOM Age String (``"045Y"``, ``"006M"``) or a
  plain number; ``None`` when empty, unreadable, negative, not finite or above 150.
* :func:`normalise_date`: ``YYYYMMDD`` from a DICOM Date (``20240102``, the old ``2024.01.02``)
  or an ISO date (``2024-01-02``); ``None`` when empty or not a calendar date.
* :func:`uid_problem`: why a DICOM UID is not one (``None`` for a valid UID): at most 64
  characters, digits in dot-separated components.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

FRONTAL_VIEWS = frozenset({"PA", "AP", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR", "AP AXIAL"})

__all__ = ["FRONTAL_VIEWS", "normalise_age", "normalise_date", "normalise_sex", "uid_problem",
           "view_decision"]
#: The oldest age kept (years); anything above is a malformed value.
MAX_AGE = 150.0
_DATE = re.compile(r"^(\d{4})[-.]?(\d{2})[-.]?(\d{2})$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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


def normalise_text(value: Any) -> str | None:
    """``value`` as stripped text; ``None`` for ``None`` or blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


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
        return _plausible_age(float(value))
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
    return None if divisor is None else _plausible_age(n / divisor)


def _plausible_age(years: float) -> float | None:
    return years if math.isfinite(years) and 0.0 <= years <= MAX_AGE else None


def normalise_date(value: Any) -> str | None:
    """``YYYYMMDD`` for a calendar date given as ``YYYYMMDD``, ``YYYY.MM.DD`` or
    ``YYYY-MM-DD`` (the first 10 characters of a longer text); ``None`` otherwise."""
    if value is None:
        return None
    match = _DATE.match(str(value).strip()[:10])
    if not match:
        return None
    try:
        return dt.date(*map(int, match.groups())).strftime("%Y%m%d")
    except ValueError:
        return None


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a DICOM UID (PS3.5 9.1: at most 64 characters, components of
    digits separated by dots), or ``None`` when it is one."""
    if len(value) > 64:
        return f"longer than 64 characters ({len(value)})"
    if not _UID.match(value):
        return "not digits separated by dots"
    return None
