"""De-identification at ingest: what the catalog stores (and so the API returns) of a record,
following the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Applied in ONE place, the indexer's decoding worker (:func:`indexer.decode.decode`), to the
record's catalog fields before they leave the worker; the writer stores what it is given.
With ``chextriev index --pseudonymise`` (a key from ``CHEXTRIEV_PSEUDONYM_KEY`` or
``--pseudonym-key-file``):

=====================  ======================================  ===========  =================================
catalog field          DICOM attribute                         PS3.15 E.1   stored
=====================  ======================================  ===========  =================================
``patient_id``         Patient ID (0010,0020)                  Z            keyed hash (32 hex), the same for
                                                                            the same patient in every run
``study_id``           Study Instance UID / a manifest's id    U            keyed hash (32 hex)
``*_instance_uid``     Study, Series, SOP Instance UID         U            ``2.25.<integer>`` from the keyed
                                                                            hash (a valid UID, consistent)
``image_id``           (from the file name, SOPInstanceUID or  U / (none)   keyed hash: the SOP instance
                       a manifest)                                          UID's pseudonym when it is that,
                                                                            else 32 hex
``study_date``         Study Date (0008,0020)                  Z            shifted per patient by a keyed
                                                                            1..365 days (Retain Longitudinal
                                                                            Temporal Information, Modified
                                                                            Dates) or only the year
``sex``, ``age``       Patient's Sex, Patient's Age            Z, X         kept (Retain Patient
                                                                            Characteristics: the filters)
``view``               View Position (0018,5101)               (kept)       kept
pixels                 Burned In Annotation (0028,0301) YES    (Clean       image skipped with the reason,
                                                                Pixel)      unless ``keep_burned_in``
=====================  ======================================  ===========  =================================

The ledger of an indexing run (``sources.path``, ``images.source_path``: a file's path, or a
``dicomweb:`` key holding the study, series and instance UIDs) stores keyed hashes, not the keys
(:func:`ledger_pseudonym`): the same key and record give the same hash, so incremental runs find
what earlier runs stored, and no path, file name or UID is in the catalog file. The keyed hash is HMAC-SHA256; the patient and study
pseudonyms are those of earlier versions (``hmac(key, id)[:32]``), so a server given the key
finds an upload's patient (``exclude_same_patient``) in old and new archives alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.io.fields import normalise_date, normalise_text

PSEUDONYM_KEY_ENV = "CHEXTRIEV_PSEUDONYM_KEY"
#: ``shift``: each patient's dates move by the same keyed number of days; ``year``: only the year.
DATE_MODES = ("shift", "year")
#: Dates are shifted by 1 to this many days, earlier or later (keyed per patient).
MAX_SHIFT_DAYS = 365
#: Catalog fields that hold a DICOM UID.
UID_FIELDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid")


def read_key(key_file: str | Path | None = None, *, what: str = "--pseudonymise") -> bytes:
    """The pseudonymisation key from ``key_file`` when given, else ``$CHEXTRIEV_PSEUDONYM_KEY``.

    Raises ChextrievError when neither holds one (pseudonymising without a key would be plain
    hashing, which anyone can reverse by hashing guessed identifiers).
    """
    if key_file is not None:
        path = Path(key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as error:
            raise ChextrievError(f"cannot read the pseudonymisation key file {path}: "
                                 f"{error.strerror}") from None
    else:
        key = os.environ.get(PSEUDONYM_KEY_ENV, "").strip().encode()
    if not key:
        raise ChextrievError(f"{what} needs a key: set the environment variable "
                             f"{PSEUDONYM_KEY_ENV} or pass --pseudonym-key-file FILE")
    return key


def pseudonym(key: bytes, identifier: str) -> str:
    """The keyed pseudonym of an identifier: HMAC-SHA256, 32 hex characters."""
    return hmac.new(key, str(identifier).strip().encode(), hashlib.sha256).hexdigest()[:32]


def uid_pseudonym(key: bytes, uid: str) -> str:
    """A UID's keyed pseudonym as a valid DICOM UID: ``2.25.`` and the decimal integer of a
    UUID (PS3.5 B.2) made from the HMAC of the UID; the same UID gives the same result."""
    digest = hmac.new(key, b"uid\0" + str(uid).strip().encode(), hashlib.sha256).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


#: How a pseudonymised ledger key starts: ``pseudonym:<key id>:<file|uri>:<64 hex>``.
LEDGER_PREFIX = "pseudonym:"


def key_id(key: bytes) -> str:
    """8 hex characters that tell keys apart (a keyed hash of a constant: it reveals nothing of
    the key, and lets a run see that a catalog was pseudonymised with another key)."""
    return hmac.new(key, b"chextriev key id", hashlib.sha256).hexdigest()[:8]


def ledger_pseudonym(key: bytes, record_key: str) -> str:
    """What the ledger stores for ``record_key`` (a file's absolute path, or a ``dicomweb:``
    key) in a pseudonymised catalog: ``pseudonym:<key id>:file:<HMAC-SHA256 hex>`` for a file
    (whose version, size and mtime, the ledger compares), ``...:uri:...`` for an immutable
    record (a DICOMweb instance). The same key and record always give the same value."""
    kind = "file" if os.path.isabs(record_key) else "uri"
    digest = hmac.new(key, b"ledger\0" + record_key.encode(), hashlib.sha256).hexdigest()
    return f"{LEDGER_PREFIX}{key_id(key)}:{kind}:{digest}"


@dataclass(frozen=True)
class Deidentifier:
    """The keyed de-identification of catalog fields (module docstring); picklable, so it
    travels to the decoding workers in their task arguments."""

    key: bytes = field(repr=False)
    dates: str = "shift"

    def __post_init__(self):
        if not self.key:
            raise ChextrievError("pseudonymisation key is empty")
        if self.dates not in DATE_MODES:
            raise UnknownNameError("date mode", self.dates, DATE_MODES)

    @classmethod
    def from_env_or_file(cls, key_file: str | Path | None = None, *,
                         dates: str = "shift") -> Deidentifier:
        return cls(read_key(key_file), dates)

    def pseudonym(self, identifier: str) -> str:
        return pseudonym(self.key, identifier)

    def uid(self, value: str) -> str:
        return uid_pseudonym(self.key, value)

    def ledger_key(self, record_key: str) -> str:
        return ledger_pseudonym(self.key, record_key)

    def scrub(self, text: str | None, record_key: str) -> str | None:
        """``text`` (a failure reason) without the record's key or file name in it."""
        if not text:
            return text
        for raw in (record_key, os.path.basename(record_key.rstrip("/"))):
            if len(raw) >= 5:
                text = text.replace(raw, "<file>")
        return text

    def date_shift(self, anchor: str) -> int:
        """Days (1..365, earlier or later) that every date of ``anchor`` (a patient) moves."""
        digest = hmac.new(self.key, b"date-shift\0" + anchor.encode(), hashlib.sha256).digest()
        step = int.from_bytes(digest[:8], "big") % (2 * MAX_SHIFT_DAYS)
        return step - MAX_SHIFT_DAYS if step < MAX_SHIFT_DAYS else step - MAX_SHIFT_DAYS + 1

    def date(self, value: Any, anchor: str | None) -> str | None:
        """A study date (``YYYYMMDD`` or ISO) de-identified: shifted by ``anchor``'s offset, or
        the year alone (``"2024"``); ``None`` for no date or one that is not a date."""
        date = normalise_date(value)
        if date is None:
            return None
        if self.dates == "year":
            return date[:4]
        shifted = dt.datetime.strptime(date, "%Y%m%d").date() \
            + dt.timedelta(days=self.date_shift(anchor or ""))
        return shifted.strftime("%Y%m%d")

    def apply(self, meta: dict[str, Any], *, image_id_source: str | None = None) -> dict[str, Any]:
        """The de-identified copy of catalog fields ``meta`` (``image_id``, ``patient_id``,
        ``study_id``, the three UIDs, ``study_date``; others unchanged), with
        ``pseudonymised: True``. ``image_id_source`` ``"dataset"`` marks an image id that is the
        SOPInstanceUID (it then gets the UID's pseudonym, so the two agree)."""
        out = dict(meta)
        raw_patient = normalise_text(meta.get("patient_id"))
        for name in ("patient_id", "study_id"):
            value = normalise_text(meta.get(name))
            out[name] = None if value is None else self.pseudonym(value)
        for name in UID_FIELDS:
            value = normalise_text(meta.get(name))
            out[name] = None if value is None else self.uid(value)
        image_id = normalise_text(meta.get("image_id"))
        sop = normalise_text(meta.get("sop_instance_uid"))
        if image_id is not None:
            same_as_sop = image_id_source == "dataset" and image_id == sop
            out["image_id"] = self.uid(image_id) if same_as_sop else self.pseudonym(image_id)
        anchor = raw_patient or normalise_text(meta.get("study_id")) or image_id
        out["study_date"] = self.date(meta.get("study_date"), anchor)
        out["pseudonymised"] = True
        return out


