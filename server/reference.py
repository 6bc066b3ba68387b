"""Search by reference: a study on the PACS as the query, and the report filed back. Flask-free:
the API route (``POST /api/v1/search/by-reference``, :mod:`server.api`) and ``chextriev search``
(:mod:`server.search_cli`) both use it.

    located = locate(service, connection, "1.2.840...", max_pixels=..., pseudonym_key=key)
    query = query_embedding(service, located)           # from the index, or embedded
    ...search...
    report = similar_case_report(service, located, query, rows, k=10, result_url=url)
    filed = file_report(connection, located, report)     # STOW-RS into the query's study

1. **Which image** (:func:`locate`): QIDO-RS within the study (optionally one series or one
   instance), the indexer's view rule (:func:`chextriev.io.dicomweb.find_frontal`).
2. **Already indexed?** The catalog is asked by SOPInstanceUID
   (:meth:`indexer.catalog.Catalog.lookup_instance`; in a pseudonymised index by the UID's
   pseudonym when this server has the key). Then the stored vector, findings and boxes answer,
   nothing is fetched, and the image itself is left out of its results (as a search by id).
3. **Else** WADO-RS fetches the instance, it is decoded and embedded as an uploaded file would be
   (the same reader, the same embedding function), and searched. Nothing is written to the
   index: a study fetched for a query is not indexed.
4. **The report** (:func:`similar_case_report`, :func:`file_report`): the model's findings for
   THIS image (probability, present at the checkpoint's threshold, the box of the region the model
   finds it in, where the model has regions), the similar-case evidence as counts by finding among
   the results (an archived case holds a finding by its known label, else by the model's
   prediction, the rule of the ``finding`` filter), the model and index, the link to the full
   result; no identifier of any other patient (:mod:`chextriev.io.sr`). The query's header comes
   from the fetched file, or for an indexed image from WADO-RS metadata (no pixels travel).

Errors are :class:`chextriev.errors.SourceError` subclasses (the route maps them to HTTP):
:class:`~chextriev.errors.StudyNotFoundError` (404), :class:`~chextriev.errors.NoFrontalImageError`
(422, with what the study holds), :class:`~chextriev.errors.SourceAuthError` (502: the PACS
refused our credentials), :class:`~chextriev.errors.SourceUnavailableError` (503), any other
(502); each names the PACS's URL, never a credential.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np

from chextriev.io.dicomweb import DicomwebConnection, StudyImage, find_frontal
from chextriev.io.sr import FindingReport, ModelInfo, SimilarCaseReport

log = logging.getLogger(__name__)

#: How the evidence counts a finding in an archived case (as the ``finding`` filter does).
COUNT_BASIS = "the archive's known label where the case has labels, else the model's prediction"


@dataclass
class Located:
    """The query image of a study: which instance (``image``), whether the index holds it
    (``indexed_id``, its catalog row), and, when fetched, its pixels ``(H, W)`` float32 in
    [0, 1], its header (a pydicom Dataset without pixels) and format. ``timings`` in ms:
    ``qido``, ``lookup``, ``fetch`` (WADO-RS), ``decode``."""

    image: StudyImage
    indexed_id: int | None = None
    row: dict | None = None
    pixels: np.ndarray | None = None
    header: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "index" if self.indexed_id is not None else "pacs"

    @property
    def patient_id(self) -> str | None:
        """The PatientID QIDO-RS reported for the study (``None`` when empty)."""
        value = self.image.tags.get("PatientID")
        if value is None:
            return None
        return str(value).strip() or None


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def locate(service, connection: DicomwebConnection, study_uid: str, *,
           series_uid: str | None = None, instance_uid: str | None = None,
           max_pixels: int | None = None, pseudonym_key: bytes | None = None) -> Located:
    """Find the study's query image on the PACS and read it: from the index when it holds it,
    else fetched (WADO-RS) and decoded (module docstring, steps 1-3)."""
    import pydicom

    from chextriev.io.images import read_image

    timings: dict[str, float] = {}
    started = time.perf_counter()
    image = find_frontal(connection, study_uid, series_uid=series_uid, instance_uid=instance_uid)
    timings["qido"] = _ms(started)
    started = time.perf_counter()
    indexed = service.lookup_instance(image.instance_uid, pseudonym_key=pseudonym_key)
    row = service.images([indexed])[0] if indexed is not None else None
    timings["lookup"] = _ms(started)
    if indexed is not None:
        return Located(image, indexed_id=int(indexed), row=row, timings=timings)
    started = time.perf_counter()
    data = connection.fetch_instance(image.study_uid, image.series_uid, image.instance_uid)
    timings["fetch"] = _ms(started)
    started = time.perf_counter()
    loaded = read_image(data, max_pixels=max_pixels)
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)  # decoded above: well formed
    timings["decode"] = _ms(started)
    return Located(image, pixels=loaded.pixels, header=header, timings=timings)


def query_embedding(service, located: Located, timings: dict[str, float] | None = None):
    """The :class:`server.services.QueryEmbedding` of the located image: the stored one for an
    indexed image (:func:`stored_query`), else the model's, by the upload's path
    (``SearchService.embed``)."""
    if located.indexed_id is None:
        return service.embed(located.pixels, timings=timings)
    return stored_query(service, located.indexed_id, located.row or {})


def stored_query(service, image_id: int, row: dict):
    """An indexed image as a query (a search by id, or by reference of an indexed image): its
    stored vector, probabilities (zeros where none are stored), region embeddings and region
    probabilities, boxes (``None`` when none are stored); nothing re-embedded."""
    from server.results import as_boxes, as_probabilities
    from server.services import QueryEmbedding

    class_names = service.class_names
    probabilities = as_probabilities(row.get("probabilities"), class_names)
    regions = service.region_embeddings([image_id])
    region_probabilities = row.get("region_probabilities")
    return QueryEmbedding(
        embedding=service.vector(image_id),
        probabilities=np.zeros(len(class_names), np.float32) if probabilities is None else probabilities,
        region_embeddings=None if regions is None else regions[0],
        region_probabilities=None if region_probabilities is None
        else np.asarray(region_probabilities, np.float32),
        boxes=as_boxes(row.get("boxes")),
        box_source=str(row.get("box_source") or "stored"))


def patient_keys(located: Located, pseudonym_key: bytes | None) -> list[str]:
    """The keys the query's patient may be stored under in the catalog (to exclude them): the
    PatientID QIDO-RS reported and, with the key, its pseudonym; for an indexed image its stored
    key too."""
    from chextriev.io.deid import pseudonym

    keys = []
    if located.patient_id:
        keys.append(located.patient_id)
        if pseudonym_key:
            keys.append(pseudonym(pseudonym_key, located.patient_id))
    if located.row and located.row.get("patient"):
        keys.append(str(located.row["patient"]))
    return list(dict.fromkeys(keys))


def result_link(base_url: str | None, image: StudyImage, **extra: Any) -> str | None:
    """The web page's address for this study's search (``/?study=...&series=...&instance=...``;
    the page runs it when opened), or ``None`` without a base URL."""
    if not base_url:
        return None
    query = {"study": image.study_uid, "series": image.series_uid, "instance": image.instance_uid}
    query.update({key: value for key, value in extra.items() if value not in (None, "")})
    return f"{base_url.rstrip('/')}/?{urlencode(query)}"


def _where(finding: int, query) -> tuple[tuple | None, str | None]:
    """The box and region name the model places finding ``finding`` in: the region with the
    highest region probability whose box is known; ``(None, None)`` for a model without
    regions."""
    from chextriev.vocab import REGIONS

    regional = query.region_probabilities
    if regional is None or query.boxes is None or regional.ndim != 2 or finding >= regional.shape[1]:
        return None, None
    scores = np.where(np.isfinite(query.boxes).all(axis=1), regional[:, finding], -np.inf)
    if not np.isfinite(scores).any():
        return None, None
    region = int(np.argmax(scores))
    return tuple(float(v) for v in query.boxes[region]), REGIONS[region]


def similar_case_report(service, located: Located, query, rows: list[dict], *, k: int,
                        result_url: str | None, parameters: tuple[str, ...] = (),
                        notes: tuple[str, ...] = ()) -> SimilarCaseReport:
    """What the report says (:mod:`chextriev.io.sr`): per finding the model's probability and
    verdict for this image and its region's box where the model has regions, and how many of the
    ``rows`` (the similar cases found) hold it, by :data:`COUNT_BASIS`. ``rows`` are catalog
    rows; nothing of them but these counts is used."""
    import chextriev
    from server.results import as_probabilities, known_findings, predicted_findings

    class_names = tuple(service.class_names)
    thresholds = np.broadcast_to(np.asarray(service.finding_thresholds, np.float64),
                                 (len(class_names),))
    counts: dict[str, int] = {}
    for row in rows:
        held = known_findings(row)
        if held is None:
            held = predicted_findings(as_probabilities(row.get("probabilities"), class_names),
                                      class_names, thresholds) or []
        for name in set(held):
            counts[name] = counts.get(name, 0) + 1
    has_head = getattr(service.model, "has_findings", True) and bool(class_names) \
        and query.probabilities is not None and len(query.probabilities) == len(class_names)
    note = getattr(service.model, "findings_note", None)  # a model without a finding head says why
    notes = (*notes, note) if note else notes
    scale = _box_scale(located)
    findings = []
    for index, name in enumerate(class_names):
        probability = float(query.probabilities[index]) if has_head else None
        if probability is not None and not np.isfinite(probability):
            probability = None
        present = None if probability is None else bool(probability >= thresholds[index])
        box, region = _where(index, query) if present else (None, None)
        if box is not None and scale is not None:
            box = tuple(v * s for v, s in zip(box, scale * 2))
        findings.append(FindingReport(name, probability, present, box, region,
                                      similar=counts.get(name, 0)))
    for name in sorted(set(counts) - set(class_names)):  # labels the model does not predict
        findings.append(FindingReport(name, similar=counts[name]))
    catalog = service.catalog
    model = ModelInfo(checkpoint_id=str(service.model.checkpoint_id),
                      index_build_id=getattr(catalog, "build_id", None),
                      index_size=int(service.size), software_version=chextriev.__version__,
                      parameters=parameters)
    return SimilarCaseReport(findings=findings, k=len(rows), model=model, result_url=result_url,
                             count_basis=COUNT_BASIS, notes=notes)


def _box_scale(located: Located) -> tuple[float, float] | None:
    """``(x, y)`` factors from the frame the boxes are in to the query image's pixels: an
    indexed image's stored boxes are in its stored ``width``/``height``; the DICOM's Columns and
    Rows (QIDO-RS) are the report's frame. ``None`` when they agree or are unknown."""
    if located.row is None:
        return None
    width, height = located.row.get("width"), located.row.get("height")
    columns, rows = located.image.tags.get("Columns"), located.image.tags.get("Rows")
    if not (width and height and columns and rows) or (width, height) == (columns, rows):
        return None
    return float(columns) / float(width), float(rows) / float(height)


def file_report(connection: DicomwebConnection, located: Located, report: SimilarCaseReport) -> dict:
    """Build the SR about the located image and store it into its study with STOW-RS; the new
    report's UIDs and the milliseconds spent (``header`` for the WADO-RS metadata an indexed
    image needs, ``build``, ``store``)."""
    from chextriev.io.sr import build_report, report_summary

    timings: dict[str, float] = {}
    header = located.header
    if header is None:  # indexed: the header from WADO-RS metadata, no pixels
        started = time.perf_counter()
        image = located.image
        header = connection.instance_metadata(image.study_uid, image.series_uid, image.instance_uid)
        timings["header"] = _ms(started)
    started = time.perf_counter()
    dataset = build_report(header, report)
    timings["build"] = _ms(started)
    started = time.perf_counter()
    connection.store([dataset], located.image.study_uid)
    timings["store"] = _ms(started)
    log.info("report filed into the query's study on %s (%d findings, %d similar cases)",
             connection.root, len(report.findings), report.k)  # no UID: they name a patient's record
    return {**report_summary(dataset), "timing_ms": {k: round(v, 1) for k, v in timings.items()}}
