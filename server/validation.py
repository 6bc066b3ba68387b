"""Request validation: ``k``, booleans, search filters, a search text, and the uploaded image.

Everything here raises :class:`server.errors.ApiError` (400, or 413 for a decompression bomb)
with a message naming the parameter and the accepted values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import ApiError

log = logging.getLogger(__name__)

K_MIN, K_MAX, K_DEFAULT = 1, 100, 10
#: Per-request search settings (default: the index build's, see ``/readyz`` ``search``): IVF
#: lists scanned (capped at the index's list count) and the IVF-PQ re-rank depth (x k).
NPROBE_MIN, NPROBE_MAX = 1, 4096
RERANK_MIN, RERANK_MAX = 1, 64
AGE_MIN, AGE_MAX = 0, 150
SEXES = ("F", "M")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


#: The form / query fields of the API (each at most once).
FIELDS = ("k", "exclude_same_patient", "view", "sex", "age_min", "age_max", "finding", "style",
          "nprobe", "rerank", "study_uid", "series_uid", "instance_uid", "store", "text")
#: Longest search text, in characters. The text towers read at most 64 (MedSigLIP), 77 (CheXzero)
#: or 256 (BiomedCLIP) tokens and cut the rest, as the libraries do; a longer text is refused
#: rather than silently searched by its beginning.
TEXT_MAX_CHARS = 1000


def check_single(values) -> None:
    """400 when a field of :data:`FIELDS` is given more than once (a form or query string
    may repeat a name; which value would win is not something a client should guess)."""
    getlist = getattr(values, "getlist", None)
    if getlist is None:
        return
    for name in FIELDS:
        if len(getlist(name)) > 1:
            raise ApiError(400, "bad_parameter", f"{name} is given more than once")


def parse_k(value: str | None) -> int:
    """``k`` as an int in 1..100 (default 10)."""
    if value is None:
        return K_DEFAULT
    return _bounded_int("k", value, K_MIN, K_MAX, f"an integer from {K_MIN} to {K_MAX}")


def parse_search_settings(*sources: Mapping[str, str]) -> dict[str, int]:
    """``nprobe`` (1..4096) and ``rerank`` (1..64) from the first of ``sources`` (a form, then
    the query string) that has each; absent or empty fields are left out (the build's apply)."""
    settings = {}
    for name, low, high in (("nprobe", NPROBE_MIN, NPROBE_MAX), ("rerank", RERANK_MIN, RERANK_MAX)):
        for values in sources:
            value = values.get(name)
            if value is not None and str(value).strip():
                settings[name] = _bounded_int(name, value, low, high, f"an integer from {low} to {high}")
                break
    return settings


def _bounded_int(name: str, value: str, low: int, high: int, kind: str) -> int:
    """``value`` as an int in ``low..high``; 400 saying ``name must be <kind>`` otherwise."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be {kind}, got {value!r}") from None
    if not low <= number <= high:
        raise ApiError(400, "bad_parameter", f"{name} must be from {low} to {high}, got {number}")
    return number


def parse_bool(name: str, value: str | None, default: bool = False) -> bool:
    """A boolean form/query field: exactly 1/true/yes/on or 0/false/no/off (or empty = false),
    as the OpenAPI document lists them."""
    if value is None:
        return default
    word = str(value)
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}, got {value!r}")


def _parse_age(name: str, value: str) -> int:
    return _bounded_int(name, value, AGE_MIN, AGE_MAX, "an integer number of years")


def parse_filters(form: Mapping[str, str], class_names: Sequence[str]) -> dict[str, Any]:
    """The catalog filters present in ``form``: ``view`` (e.g. PA, AP), ``sex`` (F/M),
    ``age_min``/``age_max`` (years), ``finding`` (one of ``class_names``). Empty fields are
    ignored; an unknown finding or sex lists the valid values."""
    filters: dict[str, Any] = {}
    view = (form.get("view") or "").strip()
    if view:
        filters["view"] = view.upper()
    sex = (form.get("sex") or "").strip().upper()
    if sex:
        if sex not in SEXES:
            raise ApiError(400, "bad_parameter", f"sex must be one of {', '.join(SEXES)}, got {sex!r}")
        filters["sex"] = sex
    for name in ("age_min", "age_max"):
        value = (form.get(name) or "").strip()
        if value:
            filters[name] = _parse_age(name, value)
    if "age_min" in filters and "age_max" in filters and filters["age_min"] > filters["age_max"]:
        raise ApiError(400, "bad_parameter", f"age_min ({filters['age_min']}) is above age_max ({filters['age_max']})")
    finding = (form.get("finding") or "").strip()
    if finding:
        filters["finding"] = parse_finding(finding, class_names)
    return filters


def parse_text(value: str | None) -> str:
    """The ``text`` of a search by text: a string of 1 to :data:`TEXT_MAX_CHARS` characters
    once the white space around it is stripped, without control characters (tabs and line
    breaks are white space)."""
    if value is None:
        raise ApiError(400, "missing_text", "send the text to search for as the field 'text' (JSON, "
                                            "form or multipart body)")
    text = str(value).strip()
    if not text:
        raise ApiError(400, "bad_parameter", "text is empty: give a few words, e.g. 'left pleural effusion'")
    if len(text) > TEXT_MAX_CHARS:
        raise ApiError(400, "bad_parameter", f"text is {len(text)} characters long; at most {TEXT_MAX_CHARS} "
                                             "(the model reads only its first 64 to 256 tokens)")
    control = next((ch for ch in text if (ord(ch) < 32 and ch not in "\t\n\r") or 127 <= ord(ch) < 160), None)
    if control is not None:
        raise ApiError(400, "bad_parameter", f"text holds a control character (U+{ord(control):04X}): send plain text")
    return text


def parse_uid(name: str, value: str | None) -> str | None:
    """A DICOM UID field (``study_uid``, ``series_uid``, ``instance_uid``): digits in
    dot-separated components, at most 64 characters; ``None`` when absent or empty."""
    from chextriev.errors import DataFormatError
    from chextriev.io.dicomweb import check_uid

    try:
        return check_uid(value, name)
    except DataFormatError as error:
        raise ApiError(400, "bad_parameter", str(error)) from None


def parse_finding(name: str | None, class_names: Sequence[str]) -> str:
    """A finding name of the loaded model; unknown or missing names list the valid ones."""
    if not name or name not in class_names:
        given = "missing" if not name else f"unknown: {name!r}"
        raise ApiError(400, "bad_parameter", f"finding {given}; valid: {', '.join(class_names)}")
    return name


@dataclass(frozen=True)
class DecodedUpload:
    """An uploaded image decoded to the project's array type.

    ``pixels``: ``(H, W)`` float32 in [0, 1]; ``format``: e.g. ``"png"``, ``"jpeg"``,
    ``"dicom"``; ``meta``: DICOM tags when the upload is DICOM (never logged).
    """

    pixels: np.ndarray
    format: str
    meta: dict


def decode_upload(data: bytes, max_pixels: int) -> DecodedUpload:
    """Decode an uploaded PNG, JPEG or DICOM by its content (never its name).

    Raises 400 for empty or unreadable content (with the reader's reason: corrupt data, an
    unknown transfer syntax, malformed or inconsistent image fields, non-finite pixels) and 413
    when the header announces more than ``max_pixels`` pixels per frame or more than 4 bytes a
    pixel of pixel data (``chextriev.io.guards``): checked before any pixel is decoded or any
    deflated data set inflated.
    """
    from chextriev.errors import ImageReadError, ImageTooLargeError
    from chextriev.io.images import read_image

    if not data:
        raise ApiError(400, "bad_image", "the uploaded file is empty")
    try:
        loaded = read_image(data, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        raise ApiError(413, "image_too_large", f"{error.reason} (MAX_PIXELS {max_pixels})") from None
    except ImageReadError as error:
        raise ApiError(400, "bad_image", f"not a readable PNG, JPEG or DICOM image: {error.reason}") from None
    meta = dict(getattr(loaded, "meta", None) or {})
    image_format = str(getattr(loaded, "format", None) or meta.get("format") or "unknown")
    return DecodedUpload(pixels=loaded.pixels, format=image_format, meta=meta)
