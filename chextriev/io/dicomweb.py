"""A DICOMweb service (a PACS) as a record source: QIDO-RS to find instances, WADO-RS to fetch.

    source = DicomwebSource("https://pacs.example/dicom-web", modalities=("CR", "DX"),
                            study_date="20240101-20241231",
                            credentials=Credentials.bearer(token))
    for record in source.iter_records():      # paged QIDO-RS, one record per instance
        data = fetch_bytes(record)             # WADO-RS retrieve, as stored (any syntax)

* **Search**: QIDO-RS ``/instances`` once per modality (default ``CR`` and ``DX``), optionally
  within a ``StudyDate`` range and restricted to a list of StudyInstanceUIDs, paged with
  ``limit``/``offset`` (``page_size`` results a request) so a large PACS is streamed; the
  patient, study, series, view, sex, age and date of each instance come from the QIDO-RS
  attributes (merged as DICOM tags, :func:`chextriev.io.dicom.merge_tags`), so a lateral view
  is skipped before any retrieve. A SOPInstanceUID seen twice in one search is yielded once.
* **Records**: ``key = "dicomweb:<root>/studies/<S>/series/<E>/instances/<I>"``,
  ``version = None`` (an instance is immutable by its SOPInstanceUID), ``image_id`` = the
  SOPInstanceUID, ``source`` = the instance URL; never credentials.
* **Retrieve**: WADO-RS retrieve instance with ``transfer-syntax=*`` (the stored syntax: no
  transcoding on the PACS; the decoders of :mod:`chextriev.io.dicom` read JPEG Lossless,
  JPEG-LS, JPEG 2000, RLE), returned as the Part 10 bytes of the instance.
* **Credentials**: :class:`Credentials` (bearer token or basic user + password) are sent as
  headers, never put in a URL, a record, a log line or an error message. TLS certificates are
  verified (``ca_bundle`` for a private CA); ``insecure=True`` turns that off with a warning.
* **Errors**: unreachable service -> :class:`~chextriev.errors.SourceUnavailableError`;
  401/403 -> :class:`~chextriev.errors.SourceAuthError` (both name the root URL only); any
  other HTTP error for one instance (404, 500, ...) ->
  :class:`~chextriev.errors.InstanceFetchError` for that instance.

One study by reference (the server's and ``chextriev search``'s query image, :mod:`server.reference`):

    connection = DicomwebConnection("https://pacs.example/dicom-web", credentials=...)
    image = find_frontal(connection, study_uid)        # QIDO-RS within the study, the view rule
    data = connection.fetch_instance(image.study_uid, image.series_uid, image.instance_uid)
    header = connection.instance_metadata(...)         # WADO-RS metadata: the header, no pixels
    connection.store([report], study_uid)              # STOW-RS into the study

* **Choosing the image** (:func:`choose_frontal`): the study's instances of the indexed
  modalities (``CR``, ``DX``) that the indexer's view rule keeps
  (:func:`chextriev.io.fields.view_decision`: PA/AP, an unknown view assumed frontal); of
  these, PA before AP before an unknown view, then by series and instance number. No instance
  at all -> :class:`~chextriev.errors.StudyNotFoundError`; none frontal ->
  :class:`~chextriev.errors.NoFrontalImageError` listing what the study holds.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chextriev.errors import (
    DataFormatError,
    InstanceFetchError,
    NoFrontalImageError,
    SourceAuthError,
    SourceError,
    SourceUnavailableError,
    StudyNotFoundError,
)
from chextriev.io.dicom import merge_tags
from chextriev.io.fields import uid_problem, view_decision
from chextriev.io.source_base import RecordSource, register_connections
from chextriev.records import Record

log = logging.getLogger(__name__)

TOKEN_ENV = "CHEXTRIEV_DICOMWEB_TOKEN"
PASSWORD_ENV = "CHEXTRIEV_DICOMWEB_PASSWORD"
DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_PAGE_SIZE = 500
KEY_SCHEME = "dicomweb:"
#: QIDO-RS attributes asked for each instance (what the catalog stores, and the view rule needs)
QIDO_FIELDS = (
    "PatientID", "PatientSex", "PatientAge", "StudyDate", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "ViewPosition", "Rows",
    "Columns", "BodyPartExamined",
)  # fmt: skip
#: QIDO-RS attributes asked when choosing a study's query image (the order among its frontal views)
STUDY_FIELDS = (*QIDO_FIELDS, "SeriesNumber", "InstanceNumber")
#: The most instances of one study looked at (a chest study holds a handful).
MAX_STUDY_INSTANCES = 1000
_DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")


@dataclass(frozen=True, repr=False)
class Credentials:
    """A bearer token, or a basic-auth user and password. ``repr`` never shows the secret."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        return cls(token=token)

    @classmethod
    def basic(cls, user: str, password: str) -> Credentials:
        return cls(user=user, password=password)

    @property
    def kind(self) -> str:
        return "bearer token" if self.token else "basic auth"

    def __repr__(self) -> str:
        return f"<Credentials {self.kind}>"

    __str__ = __repr__


def _read_secret(path: str | Path, what: str) -> str:
    try:
        secret = Path(path).read_text().strip()
    except OSError as error:
        raise SourceError(f"cannot read the {what} file {path}: {error.strerror or error}") from None
    if not secret:
        raise SourceError(f"the {what} file {path} is empty")
    return secret


def credentials_from(
    *,
    token_file: str | Path | None = None,
    user: str | None = None,
    password_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Credentials | None:
    """Credentials from flags, else the environment; ``None`` when there are none.

    Bearer: ``token_file`` or ``$CHEXTRIEV_DICOMWEB_TOKEN``. Basic: ``user`` with
    ``password_file`` or ``$CHEXTRIEV_DICOMWEB_PASSWORD``.

    Raises:
        SourceError: an unreadable or empty secret file, a user without a password, a
            password without a user, or both a token and a user.
    """
    environ = os.environ if environ is None else environ
    token = _read_secret(token_file, "token") if token_file is not None else None
    password = _read_secret(password_file, "password") if password_file is not None else None
    if token and user:
        raise SourceError("give either a bearer token or a user and password, not both")
    if user:
        password = password or environ.get(PASSWORD_ENV) or None
        if not password:
            raise SourceError(
                f"DICOMweb user {user!r} needs a password: --dicomweb-password-file FILE or "
                f"${PASSWORD_ENV}"
            )
        return Credentials.basic(user, password)
    if password:
        raise SourceError("a DICOMweb password needs a user (--dicomweb-user)")
    token = token or environ.get(TOKEN_ENV) or None
    return Credentials.bearer(token) if token else None


def service_root(url: str) -> str:
    """``url`` as a service root: no trailing slash, no query or fragment.

    Raises:
        DataFormatError: not http(s), no host, or credentials inside the URL (they would end
            up in logs: pass them with the credential options instead).
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise DataFormatError(f"not an http(s) DICOMweb service root: {url.split('@')[-1]!r}")
    if parts.username or parts.password:
        shown = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, "", ""))
        raise DataFormatError(
            f"credentials inside the URL {shown} are refused: pass a bearer token "
            "(--dicomweb-token-file / $CHEXTRIEV_DICOMWEB_TOKEN) or a user and password "
            "(--dicomweb-user with --dicomweb-password-file / $CHEXTRIEV_DICOMWEB_PASSWORD)"
        )
    if parts.query or parts.fragment:
        raise DataFormatError(f"a DICOMweb service root has no query or fragment: {url!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def parse_study_date(value: str | None) -> str | None:
    """A DICOM date range ``YYYYMMDD-YYYYMMDD`` (either end may be open) or one date.

    Raises:
        DataFormatError: anything else.
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    match = _DATE_RANGE.match(text)
    if not match or not (match.group(1) or match.group(3)) or (
        match.group(1) and match.group(3) and not match.group(2)
    ):
        raise DataFormatError(
            f"study date {text!r}: use YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
        )
    if match.group(1) and match.group(3) and match.group(1) > match.group(3):
        raise DataFormatError(f"study date range {text!r} ends before it starts")
    return text


def read_uid_file(path: str | Path) -> list[str]:
    """StudyInstanceUIDs from a text file: one a line, ``#`` comments and blank lines ignored.

    Raises:
        DataFormatError: unreadable file, a line that is not a UID, or no UID at all.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise DataFormatError(f"cannot read study UIDs file {path}: {error.strerror}") from None
    uids = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) or len(text) > 64:
            raise DataFormatError(f"{path}:{number}: not a DICOM UID: {text!r}")
        uids.append(text)
    if not uids:
        raise DataFormatError(f"{path}: no StudyInstanceUID in it")
    return list(dict.fromkeys(uids))


def _plain(value: Any) -> Any:
    from chextriev.io.dicom import _plain as plain

    return plain(value)


def tags_from_qido(result: dict[str, Any]) -> dict[str, Any]:
    """One QIDO-RS result (DICOM JSON) -> ``{keyword: plain value}`` of :data:`QIDO_FIELDS`."""
    from pydicom import Dataset

    ds = Dataset.from_json(result)
    return {key: _plain(ds.get(key)) for key in QIDO_FIELDS if ds.get(key) not in (None, "")}


class DicomwebConnection:
    """The service root, credentials and TLS settings; makes the HTTP client lazily per process.

    Picklable (so worker processes can fetch); the client is not pickled, the credentials are
    (they travel to the worker through the pool's pipe, never to disk or a log).
    """

    def __init__(self, root: str, *, credentials: Credentials | None = None,
                 ca_bundle: str | Path | None = None, insecure: bool = False,
                 timeout: tuple[float, float] = (5.0, 120.0), retries: int = 2):
        self.root = service_root(root)
        self.key_prefix = f"{KEY_SCHEME}{self.root}/"
        self.credentials = credentials
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        self.insecure = insecure
        self.timeout = timeout
        self.retries = retries
        self._client = None
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise SourceError(f"CA bundle {self.ca_bundle} does not exist")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    def __repr__(self) -> str:
        auth = self.credentials.kind if self.credentials else "no credentials"
        return f"<DicomwebConnection {self.root} ({auth})>"

    def client(self):
        """The ``dicomweb_client.DICOMwebClient`` of this process (made on first use)."""
        if self._client is None:
            import requests
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            if self.credentials is not None and self.credentials.token:
                session.headers["Authorization"] = f"Bearer {self.credentials.token}"
            elif self.credentials is not None:
                session.auth = (self.credentials.user, self.credentials.password)
            session.verify = False if self.insecure else (self.ca_bundle or True)
            client = DICOMwebClient(self.root, session=session, timeout=self.timeout)
            client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
            self._client = client
        return self._client

    def instance_url(self, study: str, series: str, instance: str) -> str:
        return f"{self.root}/studies/{study}/series/{series}/instances/{instance}"

    def _call(self, what: str, func, *, key: str | None = None):
        """Run ``func()`` with retries on connection errors; map failures to typed errors."""
        import requests

        attempt = 0
        while True:
            try:
                return func()
            except requests.exceptions.SSLError:
                raise SourceError(
                    f"TLS verification of the DICOMweb service {self.root} failed: pass the "
                    "service's CA certificate with --ca-bundle FILE (or --insecure to skip "
                    "verification, not for production)") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
                attempt += 1
                if attempt > self.retries:
                    kind = "timed out" if isinstance(error, requests.exceptions.Timeout) \
                        else "refused or dropped the connection"
                    raise SourceUnavailableError(
                        f"the DICOMweb service {self.root} is unreachable ({what}: {kind}); "
                        "rerun when it is back: work done so far is kept") from None
                time.sleep(0.25 * attempt)
            except requests.exceptions.HTTPError as error:
                response = error.response
                code = response.status_code if response is not None else 0
                reason = (response.reason if response is not None else "") or ""
                if code in (401, 403):
                    raise SourceAuthError(
                        f"the DICOMweb service {self.root} refused the credentials (HTTP {code} "
                        f"{reason}) for {what}: check the token or the user and password"
                        + ("" if self.credentials else "; none were given")) from None
                if code in (502, 503, 504):
                    if attempt < self.retries:
                        attempt += 1
                        time.sleep(0.25 * attempt)
                        continue
                    raise SourceUnavailableError(
                        f"the DICOMweb service {self.root} is unavailable (HTTP {code} {reason} "
                        f"to {what}); rerun when it is back: work done so far is kept") from None
                if key is None:
                    raise SourceError(
                        f"the DICOMweb service {self.root} answered HTTP {code} {reason} to "
                        f"{what}") from None
                raise InstanceFetchError(
                    key, f"HTTP {code} {reason} from the DICOMweb service") from None
            except (ValueError, KeyError, IndexError, OSError) as error:
                if key is None:
                    raise SourceError(f"the DICOMweb service {self.root} sent an answer that "
                                      f"cannot be read ({what}): {type(error).__name__}") from None
                raise InstanceFetchError(
                    key, f"the DICOMweb answer cannot be read: {type(error).__name__}: "
                         f"{str(error)[:200]}") from None

    def search(self, *, study_uid: str | None, filters: dict[str, str], limit: int,
               offset: int) -> list[dict]:
        """One QIDO-RS page of instances (DICOM JSON)."""
        return self._call(
            "QIDO-RS instance search",
            lambda: self.client().search_for_instances(
                study_instance_uid=study_uid, fields=list(QIDO_FIELDS),
                search_filters=filters or None, limit=limit, offset=offset))

    def fetch(self, record: Record) -> bytes:
        """WADO-RS retrieve of ``record``'s instance, in its stored transfer syntax."""
        uids = record.meta.get("dicomweb") or {}
        study, series, instance = uids.get("study"), uids.get("series"), uids.get("instance")
        if not (study and series and instance):
            raise InstanceFetchError(record.key, "record lacks its study/series/instance UIDs")
        return self.fetch_instance(study, series, instance, key=record.key)

    def fetch_instance(self, study: str, series: str, instance: str, *,
                       key: str | None = None) -> bytes:
        """WADO-RS retrieve of one instance as Part 10 bytes, in its stored transfer syntax.
        Failures of this instance raise :class:`InstanceFetchError` naming ``key`` (default:
        the instance URL)."""
        import pydicom

        key = key or KEY_SCHEME + self.instance_url(study, series, instance)
        ds = self._call(
            "WADO-RS retrieve",
            lambda: self.client().retrieve_instance(
                study, series, instance, media_types=(("application/dicom", "*"),)),
            key=key)
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        except (ValueError, AttributeError, KeyError):
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds)
        return buffer.getvalue()

    def instance_metadata(self, study: str, series: str, instance: str):
        """WADO-RS metadata of one instance as a pydicom ``Dataset``: the header without its
        bulk data (no pixels travel)."""
        from pydicom import Dataset

        found = self._call(
            "WADO-RS metadata",
            lambda: self.client().retrieve_instance_metadata(study, series, instance),
            key=KEY_SCHEME + self.instance_url(study, series, instance))
        if isinstance(found, list):  # some services answer a list of one
            found = found[0] if found else {}
        return Dataset.from_json(found, bulk_data_uri_handler=lambda *args: b"")

    def study_instances(self, study_uid: str, *, series_uid: str | None = None,
                        instance_uid: str | None = None) -> list[dict[str, Any]]:
        """The instances of one study (optionally of one series, or one instance) as QIDO-RS
        tags (:data:`STUDY_FIELDS`), every modality, paged; at most
        :data:`MAX_STUDY_INSTANCES`."""
        from pydicom import Dataset

        filters = {"SOPInstanceUID": instance_uid} if instance_uid else None
        found: list[dict[str, Any]] = []
        def page_at(offset: int) -> list[dict]:
            return self.client().search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid,
                fields=list(STUDY_FIELDS), search_filters=filters, limit=DEFAULT_PAGE_SIZE,
                offset=offset)

        while len(found) < MAX_STUDY_INSTANCES:
            page = self._call("QIDO-RS study search", functools.partial(page_at, len(found)))
            for result in page:
                ds = Dataset.from_json(result)
                found.append({key: _plain(ds.get(key)) for key in STUDY_FIELDS
                              if ds.get(key) not in (None, "")})
            if len(page) < DEFAULT_PAGE_SIZE:
                break
        uid = instance_uid or series_uid
        field = "SOPInstanceUID" if instance_uid else "SeriesInstanceUID"
        # a service that ignores a filter must not hand us another instance
        return [tags for tags in found if tags.get("StudyInstanceUID", study_uid) == study_uid
                and (uid is None or tags.get(field) == uid)]

    def store(self, datasets: Sequence[Any], study_uid: str) -> list[str]:
        """STOW-RS of ``datasets`` into the study ``study_uid``; the SOPInstanceUIDs stored.

        Raises:
            SourceError: the service refused any of them (its failure reason named), or any
                error of :meth:`_call` (unreachable, credentials refused).
        """
        response = self._call(
            "STOW-RS store",
            lambda: self.client().store_instances(list(datasets), study_instance_uid=study_uid))
        failed = list(getattr(response, "FailedSOPSequence", None) or []) if response else []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise SourceError(f"the DICOMweb service {self.root} refused to store {len(failed)} "
                              f"instance(s) (STOW-RS failure reason {', '.join(reasons)})")
        stored = list(getattr(response, "ReferencedSOPSequence", None) or []) if response else []
        uids = [str(item.ReferencedSOPInstanceUID) for item in stored
                if "ReferencedSOPInstanceUID" in item]
        return uids or [str(ds.SOPInstanceUID) for ds in datasets]


@dataclass(frozen=True)
class StudyImage:
    """One instance of a study as QIDO-RS described it: its three UIDs and its tags."""

    study_uid: str
    series_uid: str
    instance_uid: str
    tags: dict[str, Any]

    @property
    def view(self) -> str | None:
        return view_decision(self.tags.get("ViewPosition"))[0]

    @property
    def sop_class_uid(self) -> str | None:
        return self.tags.get("SOPClassUID")

    def describe(self) -> dict[str, Any]:
        return {"series_uid": self.series_uid, "instance_uid": self.instance_uid,
                "modality": self.tags.get("Modality"), "view": self.view}


def check_uid(value: str | None, what: str) -> str | None:
    """``value`` stripped when it is a DICOM UID, ``None`` when empty.

    Raises:
        DataFormatError: anything else (saying why).
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    problem = uid_problem(text)
    if problem:
        raise DataFormatError(f"{what} {text[:80]!r} is not a DICOM UID: {problem}")
    return text


def _rank(image: StudyImage) -> tuple:
    """PA before AP before an unknown view; then series and instance number, then UIDs."""
    order = {"PA": 0, "AP": 1}.get(image.view or "", 2)

    def number(key: str) -> float:
        try:
            return float(image.tags.get(key))
        except (TypeError, ValueError):
            return float("inf")

    return (order, number("SeriesNumber"), number("InstanceNumber"), image.series_uid,
            image.instance_uid)


def choose_frontal(study_uid: str, instances: Sequence[dict[str, Any]], *,
                   modalities: Sequence[str] = DEFAULT_MODALITIES,
                   what: str | None = None) -> StudyImage:
    """The query image of a study among its QIDO-RS ``instances`` (module docstring).

    Raises:
        StudyNotFoundError: no instance at all (``what`` names what was asked for).
        NoFrontalImageError: none of the indexed modalities with a frontal view.
    """
    images = [StudyImage(str(tags.get("StudyInstanceUID") or study_uid),
                         str(tags.get("SeriesInstanceUID") or ""),
                         str(tags.get("SOPInstanceUID") or ""), dict(tags))
              for tags in instances]
    images = [image for image in images if image.series_uid and image.instance_uid]
    if not images:
        raise StudyNotFoundError(f"the PACS holds no {what or f'study {study_uid}'}",
                                 study_uid=study_uid)
    wanted = {m.upper() for m in modalities}
    candidates = [image for image in images
                  if (not wanted or str(image.tags.get("Modality") or "").upper() in wanted)
                  and view_decision(image.tags.get("ViewPosition"))[1] is None]
    if not candidates:
        found = sorted((image.describe() for image in images),
                       key=lambda d: (str(d["modality"]), str(d["view"]), d["instance_uid"]))
        kinds = sorted({f"{d['modality'] or '?'} {d['view'] or '(no view)'}" for d in found})
        raise NoFrontalImageError(
            f"study {study_uid} holds no frontal radiograph ({'/'.join(sorted(wanted))} with "
            f"view PA or AP, or no view): it holds {len(found)} instance(s): {', '.join(kinds)}",
            study_uid=study_uid, found=found)
    return min(candidates, key=_rank)


def find_frontal(connection: DicomwebConnection, study_uid: str, *,
                 series_uid: str | None = None, instance_uid: str | None = None,
                 modalities: Sequence[str] = DEFAULT_MODALITIES) -> StudyImage:
    """QIDO-RS within the study (series, instance) and :func:`choose_frontal`."""
    study_uid = check_uid(study_uid, "study_uid")
    if study_uid is None:
        raise DataFormatError("a StudyInstanceUID is required")
    series_uid = check_uid(series_uid, "series_uid")
    instance_uid = check_uid(instance_uid, "instance_uid")
    instances = connection.study_instances(study_uid, series_uid=series_uid,
                                           instance_uid=instance_uid)
    what = (f"instance {instance_uid} in study {study_uid}" if instance_uid
            else f"series {series_uid} in study {study_uid}" if series_uid else None)
    return choose_frontal(study_uid, instances, modalities=modalities, what=what)


class DicomwebSource(RecordSource):
    """Instances of a DICOMweb service found by QIDO-RS (see the module docstring).

    Args:
        url: the service root (``https://pacs.example/dicom-web``).
        modalities: one QIDO-RS search per modality (default ``CR``, ``DX``); empty = all.
        study_date: a DICOM date range (``YYYYMMDD-YYYYMMDD``, either end open).
        study_uids: only these studies (a list, or a file of one UID a line).
        credentials: bearer or basic :class:`Credentials`.
        ca_bundle: CA certificates to verify the service's TLS certificate with.
        insecure: do not verify TLS certificates (logs a warning).
        page_size: QIDO-RS results per request (``limit``).
    """

    def __init__(self, url: str, *, modalities: Sequence[str] | None = DEFAULT_MODALITIES,
                 study_date: str | None = None,
                 study_uids: Sequence[str] | str | Path | None = None,
                 credentials: Credentials | None = None, ca_bundle: str | Path | None = None,
                 insecure: bool = False, page_size: int = DEFAULT_PAGE_SIZE):
        self.connection = DicomwebConnection(url, credentials=credentials, ca_bundle=ca_bundle,
                                             insecure=insecure)
        self.root = self.connection.root
        self.modalities = tuple(m.strip().upper() for m in (modalities or ()) if m.strip())
        self.study_date = parse_study_date(study_date)
        if isinstance(study_uids, (str, Path)):
            study_uids = read_uid_file(study_uids)
        self.study_uids = tuple(dict.fromkeys(study_uids)) if study_uids else None
        if page_size < 1:
            raise DataFormatError(f"page_size must be at least 1, got {page_size}")
        self.page_size = int(page_size)
        if insecure:
            log.warning("TLS certificate verification is OFF for %s (--insecure): anyone on the "
                        "network path can read and alter the images", self.root)
        host = urlsplit(self.root).hostname or ""
        if credentials is not None and self.root.startswith("http://") and host not in (
                "localhost", "127.0.0.1", "::1"):
            log.warning("credentials are sent unencrypted to %s: use https://", self.root)
        register_connections([self.connection])
        filters = [f"modality {'/'.join(self.modalities) or 'any'}"]
        if self.study_date:
            filters.append(f"study date {self.study_date}")
        if self.study_uids:
            filters.append(f"{len(self.study_uids)} studies")
        self.description = f"DICOMweb {self.root} ({', '.join(filters)})"

    def connections(self) -> tuple[DicomwebConnection, ...]:
        return (self.connection,)

    def check(self) -> None:
        """One QIDO-RS request (``limit=1``): raises SourceUnavailableError / SourceAuthError."""
        study, filters = next(self._queries())
        self.connection.search(study_uid=study, filters=filters, limit=1, offset=0)

    def _queries(self) -> Iterator[tuple[str | None, dict[str, str]]]:
        for study in self.study_uids or (None,):
            for modality in self.modalities or (None,):
                filters = {}
                if modality:
                    filters["Modality"] = modality
                if self.study_date:
                    filters["StudyDate"] = self.study_date
                yield study, filters

    def record_for(self, tags: dict[str, Any]) -> Record | None:
        """The record of one QIDO-RS result (``None`` without the three UIDs)."""
        study, series = tags.get("StudyInstanceUID"), tags.get("SeriesInstanceUID")
        instance = tags.get("SOPInstanceUID")
        if not (study and series and instance):
            log.warning("%s: a QIDO-RS result lacks its UIDs; ignored", self.root)
            return None
        url = self.connection.instance_url(study, series, instance)
        record = Record(
            source=url, image_id=str(instance), origin=f"dicomweb:{self.root}",
            meta={"format": "dicom", "image_id_source": "dataset", "tags_merged": True,
                  "dicomweb": {"study": study, "series": series, "instance": instance}},
            key=KEY_SCHEME + url, version=None)
        return merge_tags(record, tags)

    def iter_records(self) -> Iterator[Record]:
        seen: set[str] = set()
        for study, filters in self._queries():
            offset = 0
            while True:
                page = self.connection.search(study_uid=study, filters=filters,
                                              limit=self.page_size, offset=offset)
                if not page:
                    break
                offset += len(page)
                for result in page:
                    record = self.record_for(tags_from_qido(result))
                    if record is None or record.image_id in seen:
                        continue
                    seen.add(record.image_id)
                    yield record
