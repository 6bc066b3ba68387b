"""Deterministic identifiers from the seed: MIMIC-style subject/study/dicom ids, DICOM UIDs,
study dates. The same (seed, key) always gives the same id."""

from __future__ import annotations

import datetime
import hashlib


def _digest(seed: int, *key: object) -> bytes:
    return hashlib.sha256(("chextriev-synth|" + "|".join(map(str, (seed, *key)))).encode()).digest()


def subject_id(seed: int, patient: int) -> str:
    """8-digit subject id starting with 1 (MIMIC: 10000000-19999999), unique per patient index."""
    offset = int.from_bytes(_digest(seed, "subject-offset"), "big") % 1_000_000
    return str(10_000_000 + (offset + patient * 7919) % 9_000_000)  # 7919 is prime: no collisions below 9e6/gcd


def study_id(seed: int, patient: int, study: int) -> str:
    """8-digit study id starting with 5 (MIMIC style), unique per (patient, study)."""
    offset = int.from_bytes(_digest(seed, "study-offset"), "big") % 1_000_000
    return str(50_000_000 + (offset + (patient * 4 + study) * 104729) % 9_000_000)


def dicom_id(seed: int, patient: int, study: int) -> str:
    """MIMIC-style dicom id: five groups of 8 hex digits."""
    h = _digest(seed, "dicom", patient, study).hex()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def uid(seed: int, *key: object) -> str:
    """A DICOM UID under the 2.25 (UUID-derived) root, at most 64 characters."""
    return "2.25." + str(int.from_bytes(_digest(seed, "uid", *key)[:16], "big"))


def study_date(seed: int, patient: int, study: int) -> str:
    """YYYYMMDD; a patient's studies are in chronological order."""
    base = datetime.date(2110, 1, 1) + datetime.timedelta(days=int.from_bytes(_digest(seed, "date", patient), "big") % 3000)
    gaps = [int.from_bytes(_digest(seed, "gap", patient, k), "big") % 400 + 1 for k in range(study)]
    return (base + datetime.timedelta(days=sum(gaps))).strftime("%Y%m%d")
