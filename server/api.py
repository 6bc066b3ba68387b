"""The JSON API blueprint, mounted under ``/api/v1`` (see :mod:`server.openapi` for the schema).

Every route needs the bearer token when one is configured. Nothing here opens a file named by
the request: images come from the upload or from the catalog by integer id. Every id route
answers 404 for anything that is not an indexed image (skipped, failed, removed, unknown, or
outside 1..2**63-1), before the database is asked for a number it cannot hold. Responses are
JSON without NaN or infinity (:func:`server.results.jsonable`, then the strict provider of
:mod:`server.errors`). Logs carry image ids, counts and timings only, never an upload's file
name or a patient identifier; the audit log (:mod:`server.audit`) gets the ids answered.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from chextriev.errors import (
    ImageReadError,
    InstanceFetchError,
    NoFrontalImageError,
    SourceAuthError,
    SourceError,
    SourceUnavailableError,
    StudyNotFoundError,
)
from chextriev.io.pixels import shrink
from server import reference, text_search
from server.audit import record_ids
from server.auth import require_token
from server.errors import ApiError, error_response
from server.openapi import openapi_spec
from server.preview import QueryPreview
from server.results import (
    FINDING_FILTER_RULE,
    abnormality,
    as_boxes,
    boxes_list,
    finding_filter_basis,
    findings_list,
    image_detail,
    jsonable,
    known_findings,
    region_matches_many,
    result_tile,
)
from server.services import (
    HEATMAP_STYLES,
    NotReadyError,
    QueryEmbedding,
    SearchService,
)
from server.validation import (
    check_single,
    decode_upload,
    parse_bool,
    parse_filters,
    parse_finding,
    parse_k,
    parse_search_settings,
    parse_text,
    parse_uid,
)

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(require_token)


@bp.before_request
def _poll():
    """Pick up a newly committed index build, or retry a failed load (in the background)."""
    current_app.extensions["chextriev"].poll()


#: Longest side an uploaded image is shrunk to before its Grad-CAM overlay is drawn.
HEATMAP_SIDE = 1024
#: Catalog ids are positive 64-bit integers (SQL BIGINT, Faiss int64).
MAX_IMAGE_ID = 2**63 - 1
INDEXED = "indexed"


def service() -> SearchService:
    return current_app.extensions["chextriev"]


@bp.errorhandler(NotReadyError)
def _not_ready(error: NotReadyError):
    return error_response(503, "not_ready", f"the server is not ready: {error}",
                          {"Retry-After": str(getattr(error, "retry_after", 5))})


#: Seconds a client is told to wait before asking again while the PACS is unreachable.
PACS_RETRY_AFTER_S = 30


@bp.errorhandler(StudyNotFoundError)
def _unknown_study(error: StudyNotFoundError):
    return error_response(404, "unknown_study", str(error))


@bp.errorhandler(NoFrontalImageError)
def _no_frontal(error: NoFrontalImageError):
    response = jsonify({"error": {"code": "no_frontal_image", "message": str(error),
                                  "found": error.found}})
    response.status_code = 422
    return response


@bp.errorhandler(SourceUnavailableError)
def _pacs_unavailable(error: SourceUnavailableError):
    return error_response(503, "pacs_unavailable", str(error), {"Retry-After": str(PACS_RETRY_AFTER_S)})


@bp.errorhandler(SourceAuthError)
def _pacs_refused(error: SourceAuthError):
    return error_response(502, "pacs_refused", str(error))


@bp.errorhandler(SourceError)
def _pacs_error(error: SourceError):
    return error_response(502, "pacs_error", str(error))


@bp.errorhandler(InstanceFetchError)
def _pacs_fetch(error: InstanceFetchError):  # an ImageReadError, but the PACS's failure, not the client's
    return error_response(502, "pacs_error", f"the PACS could not deliver the query image: {error.reason}")


def _uploaded_image():
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "missing_image", "send the image as a multipart/form-data file field named 'image'")
    return decode_upload(upload.read(), current_app.config["MAX_PIXELS"])


def _preview_url(image_id: int) -> str:
    """The URL of the image an archived case is viewed at: its preview route (which serves the
    thumbnail, and says so, for an image indexed without a preview)."""
    return url_for("api.preview", image_id=image_id)


#: Response header of the preview and heatmap routes: what the image was made from.
PREVIEW_HEADER = "X-Chextriev-Preview"
#: Response header of the heatmap routes: the method that made the map (``gradcam`` or ``pcam``).
METHOD_HEADER = "X-Chextriev-Heatmap-Method"
NO_PREVIEW_NOTE = ("thumbnail: the index stores no preview of this image (built before previews "
                   "or with --preview-side 0; re-index into a new --index-dir to get them)")
_told_no_preview: set[int] = set()


def _id_url(endpoint: str):
    """``image_id -> URL`` of an image route (``api.thumbnail``, ``api.preview``, ``api.image``):
    ``url_for`` once per response, then the id put in its place (the tiles of a result list)."""
    prefix, _, suffix = url_for(endpoint, image_id=_URL_MARK).rpartition(str(_URL_MARK))
    return lambda image_id: f"{prefix}{int(image_id)}{suffix}"


_URL_MARK = 987654321987


def _no_preview(image_id: int) -> str:
    """Log once per process that archived images are served at thumbnail size; the header."""
    if not _told_no_preview:
        log.warning("image %d has no stored preview: serving and computing heatmaps on its "
                    "thumbnail (an index built before previews, or with --preview-side 0)",
                    image_id)
        _told_no_preview.add(image_id)
    return NO_PREVIEW_NOTE


def _image_row(image_id: int) -> dict:
    """The catalog row of an INDEXED image; 404 for any other id (out of range, unknown,
    skipped, failed or removed: only indexed images have vectors, thumbnails and results)."""
    if not 1 <= image_id <= MAX_IMAGE_ID:
        raise ApiError(404, "unknown_image", f"no indexed image has id {image_id}")
    rows = service().images_or_none([image_id])
    if not rows or rows[0] is None or rows[0].get("status", INDEXED) != INDEXED:
        raise ApiError(404, "unknown_image", f"no indexed image has id {image_id}")
    return rows[0]


def _json(payload: dict):
    """``payload`` as a JSON response, NaN and infinities as ``null`` (never invalid JSON)."""
    return jsonify(jsonable(payload))


def _upload_patient_keys(meta: dict) -> list[str]:
    """The keys an upload's DICOM ``PatientID`` may be stored under: the raw identifier
    (archives indexed without pseudonymisation) and, when this server has the indexer's key
    (``pseudonym_key_file`` / ``CHEXTRIEV_PSEUDONYM_KEY``), its pseudonym. Used only to exclude
    that patient's images; never stored or logged."""
    from chextriev.io.deid import pseudonym

    patient_id = str(meta.get("PatientID") or "").strip()
    if not patient_id:
        return []
    key = current_app.config.get("PSEUDONYM_KEY")
    return [patient_id, pseudonym(key, patient_id)] if key else [patient_id]


def _form_values(types: dict[str, type] | None = None):
    """The request's fields: a JSON object (typed, :func:`_json_fields`; ``types`` default
    :data:`JSON_FIELD_TYPES`), a form, or the query string; each field at most once."""
    values = request.form if request.form else request.args
    check_single(values)
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded") \
            and request.content_length and not request.form and not request.files:
        raise ApiError(400, "bad_body", f"the {request.mimetype} body holds no field: malformed")
    if request.is_json:
        values = _json_fields(request.get_json(silent=True), types or JSON_FIELD_TYPES)
    return values


def _search_response(query: QueryEmbedding, query_info: dict, *, k: int, exclude_ids: list[int],
                     exclude_patients: list[str], filters: dict, started: float,
                     timings: dict, settings: dict | None = None) -> tuple[dict, list[dict]]:
    """The search response for ``query``, and the catalog rows of its results. ``settings``:
    the request's ``nprobe``/``rerank`` (absent: the build's)."""
    svc = service()
    class_names = svc.class_names
    settings = settings or {}
    searched = time.perf_counter()
    hits = svc.search_hits(query.embedding, k, exclude_ids=exclude_ids, exclude_patients=exclude_patients,
                           filters=filters, **settings)
    timings["search"] = (time.perf_counter() - searched) * 1000
    responding = time.perf_counter()
    hits, rows = svc.rows_of_hits(hits, k)  # the catalog rows, read once (their status in them)
    ids = [int(hit.image_id) for hit in hits]
    stored_regions = svc.region_embeddings(ids) if query.region_embeddings is not None and ids else None
    thresholds = svc.finding_thresholds  # per class, chosen on validation (0.5 without)
    findings = findings_list(query.probabilities, class_names, thresholds)
    predicted = [item["name"] for item in findings if item["predicted"]]
    note = svc.model.findings_note  # a model without a finding head predicts none, and says why
    finding = filters.get("finding")
    matches = region_matches_many(query.region_embeddings, stored_regions, query.boxes,
                                  [as_boxes(row.get("boxes")) for row in rows])
    thumbnail_url, preview_url, image_url = (_id_url(name) for name in ("api.thumbnail", "api.preview", "api.image"))
    viewer_template = current_app.config.get("VIEWER_URL")
    results = [result_tile(rank, hit, row, matched_regions=matched, query_findings=set(predicted),
                           class_names=class_names, thumbnail_url=thumbnail_url(hit.image_id),
                           preview_url=preview_url(hit.image_id), image_url=image_url(hit.image_id),
                           finding_filter=finding, viewer_template=viewer_template, threshold=thresholds)
               for rank, (hit, row, matched) in enumerate(zip(hits, rows, matches), start=1)]
    timings["response"] = timings.get("response", 0.0) + (time.perf_counter() - responding) * 1000
    timings["total"] = (time.perf_counter() - started) * 1000
    payload = {
        "query": {**query_info, "findings": None if note else findings, "predicted_findings": None if note else predicted,
                  **({"findings_note": note} if note else {}),
                  "abnormality": abnormality(query.probabilities, class_names, thresholds),
                  "boxes": boxes_list(query.boxes), "box_source": query.box_source},
        "k": k,
        "filters": filters,
        "exclude_same_patient": bool(exclude_patients),
        "index_size": svc.size,
        "checkpoint_id": svc.model.checkpoint_id,
        "search": svc.search_settings(**settings),
        "results": results,
        "timing_ms": {name: round(value, 1) for name, value in timings.items()},
    }
    record_ids(result_ids=ids)
    if finding:
        bases = [finding_filter_basis(row) for row in rows]
        payload["finding_filter"] = {"finding": finding, "rule": FINDING_FILTER_RULE,
                                     "matched_on": {basis: bases.count(basis) for basis in ("known", "predicted")}}
    return payload, rows


#: The fields a JSON body may carry, and the JSON type each must have (others are ignored).
JSON_FIELD_TYPES = {"k": int, "age_min": int, "age_max": int, "exclude_same_patient": bool,
                    "view": str, "sex": str, "finding": str, "nprobe": int, "rerank": int}
#: ... and those of a search by reference.
REFERENCE_FIELD_TYPES = {**JSON_FIELD_TYPES, "study_uid": str, "series_uid": str,
                         "instance_uid": str, "store": bool}
#: ... and those of a search by text (no patient to exclude).
TEXT_FIELD_TYPES = {**{key: kind for key, kind in JSON_FIELD_TYPES.items() if key != "exclude_same_patient"},
                    "text": str}


def _json_fields(body, types: dict[str, type] = JSON_FIELD_TYPES) -> dict[str, str]:
    """A JSON body's fields as form values: an object whose fields have their JSON types
    (:data:`JSON_FIELD_TYPES`: ``k`` a number, ``exclude_same_patient`` a boolean, ...)."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", f"the JSON body must be an object of fields ({', '.join(types)})")
    fields = {}
    for key, kind in types.items():
        if key not in body:
            continue
        value = body[key]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ApiError(400, "bad_parameter",
                           f"{key} must be a JSON {'number' if kind is int else kind.__name__.replace('str', 'string')}")
        fields[key] = ("true" if value else "false") if kind is bool else str(value)
    return fields


@bp.get("/healthz")
def healthz():
    """Alive (says nothing about the model; see ``/readyz``)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """503 until the model, index and database are loaded; then what was loaded."""
    status = service().status()
    response = jsonify(jsonable(status))
    if not status["ready"]:
        response.status_code = 503
        response.headers["Retry-After"] = str(status.get("retry_after_s", 5))
    return response


@bp.get("/openapi.json")
def openapi():
    svc = service()
    return jsonify(openapi_spec(svc.model.class_names if svc.ready else None))


@bp.post("/search")
def search_upload():
    """Search with an uploaded PNG, JPEG or DICOM."""
    started = time.perf_counter()
    check_single(request.form)
    check_single(request.args)
    k = parse_k(request.form.get("k", request.args.get("k")))
    exclude_same_patient = parse_bool("exclude_same_patient", request.form.get("exclude_same_patient"))
    settings = parse_search_settings(request.form, request.args)
    svc = service()
    svc.require_ready()
    filters = parse_filters(request.form, svc.class_names)
    upload = _uploaded_image()
    timings = {"decode": (time.perf_counter() - started) * 1000}
    preview = QueryPreview(upload.pixels)  # encoded while the model runs
    embedded = time.perf_counter()
    query = svc.embed(upload.pixels, timings=timings)  # adds boxes, model (and wait)
    timings["embed"] = (time.perf_counter() - embedded) * 1000
    previewed = time.perf_counter()
    exclude_patients: list[str] = []
    patient_note = None
    if exclude_same_patient:
        exclude_patients = _upload_patient_keys(upload.meta)
        if not exclude_patients:
            patient_note = "the upload names no patient (only DICOM uploads carry PatientID): nothing excluded"
    height, width = upload.pixels.shape
    query_info = {"source": "upload", "format": upload.format, "width": int(width), "height": int(height),
                  "known_findings": None, "preview_url": preview.url()}
    timings["response"] = (time.perf_counter() - previewed) * 1000  # waiting for the query preview
    payload, rows = _search_response(query, query_info, k=k, exclude_ids=[],
                                     exclude_patients=exclude_patients, filters=filters,
                                     started=started, timings=timings, settings=settings)
    if exclude_patients and not current_app.config.get("PSEUDONYM_KEY") \
            and any(row.get("pseudonymised") for row in rows):
        payload["exclude_same_patient"] = False  # the stored keys are pseudonyms we cannot make
        patient_note = ("exclude_same_patient was NOT applied: the archive is pseudonymised and this "
                        "server has no pseudonymisation key (pseudonym_key_file or "
                        "CHEXTRIEV_PSEUDONYM_KEY), so the query's own patient may be among the results")
    if patient_note:
        payload["notes"] = [patient_note]
    log.info("search upload (%s, %dx%d): k=%d, %d results in %.0f ms", upload.format, width, height, k,
             len(payload["results"]), payload["timing_ms"]["total"])
    return _json(payload)


@bp.post("/search/by-id/<int:image_id>")
def search_by_id(image_id: int):
    """Search with an archived image: its stored vector, no re-embedding; itself excluded."""
    started = time.perf_counter()
    values = _form_values()
    k = parse_k(values.get("k"))
    exclude_same_patient = parse_bool("exclude_same_patient", values.get("exclude_same_patient"))
    settings = parse_search_settings(values)
    svc = service()
    svc.require_ready()
    filters = parse_filters(values, svc.class_names)
    row = _image_row(image_id)
    query = reference.stored_query(svc, image_id, row)
    patient = row.get("patient")
    query_info = {"source": "archive", "id": image_id, "image_id": row.get("image_id"),
                  "study": row.get("study"), "patient": patient, "view": row.get("view"),
                  "width": row.get("width"), "height": row.get("height"),
                  "known_findings": known_findings(row),
                  "thumbnail_url": url_for("api.thumbnail", image_id=image_id),
                  "preview_url": _preview_url(image_id),
                  "image_url": url_for("api.image", image_id=image_id)}
    payload, _ = _search_response(query, jsonable(query_info), k=k, exclude_ids=[image_id],
                               exclude_patients=[patient] if exclude_same_patient and patient else [],
                               filters=filters, started=started, timings={}, settings=settings)
    record_ids(query_id=image_id)
    if exclude_same_patient and not patient:
        payload["notes"] = [f"image {image_id} has no recorded patient: nothing excluded"]
    log.info("search by id %d: k=%d, %d results in %.0f ms", image_id, k, len(payload["results"]),
             payload["timing_ms"]["total"])
    return _json(payload)


@bp.post("/search/text")
def search_text():
    """Search with a text (a CLIP-family encoder model's own text tower): the archived images
    nearest the text, each with the regions the text points at. See :mod:`server.text_search`.
    The text is never logged (its length is) nor written to the audit log."""
    started = time.perf_counter()
    if "text" in request.args:
        raise ApiError(400, "bad_parameter", "send the text in the request body (JSON or form), not in the "
                                             "URL: addresses end up in proxy and browser logs")
    values = _form_values(TEXT_FIELD_TYPES)
    k = parse_k(values.get("k"))
    text = parse_text(values.get("text"))
    settings = parse_search_settings(values)
    svc = service()
    svc.require_ready()
    text_search.require_text_search(svc.model)
    filters = parse_filters(values, svc.class_names)
    timings: dict[str, float] = {}
    query = text_search.text_query(svc, text, timings)
    payload, rows = _search_response(query, {"source": text_search.SOURCE, "text": text, "known_findings": None},
                                     k=k, exclude_ids=[], exclude_patients=[], filters=filters, started=started,
                                     timings=timings, settings=settings)
    text_search.add_text_regions(svc, query, payload, rows, timings)
    payload["timing_ms"]["total"] = round((time.perf_counter() - started) * 1000, 1)
    log.info("search by text (%d characters): k=%d, %d results in %.0f ms", len(text), k,
             len(payload["results"]), payload["timing_ms"]["total"])
    return _json(payload)


@bp.get("/images/<int:image_id>")
def image(image_id: int):
    """Metadata, known findings, predicted and region probabilities, boxes of an archived image."""
    svc = service()
    svc.require_ready()
    row = _image_row(image_id)
    detail = image_detail(row, svc.class_names, current_app.config.get("VIEWER_URL"), svc.finding_thresholds)
    if svc.model.findings_note:  # no finding head: no predicted findings (null), and why
        detail["predicted_findings"] = None
        detail["findings_note"] = svc.model.findings_note
    detail["thumbnail_url"] = url_for("api.thumbnail", image_id=image_id)
    detail["preview_url"] = _preview_url(image_id)
    detail["preview_source"] = "preview" if svc.preview(image_id, check_only=True) else "thumbnail"
    record_ids(query_id=image_id)
    return _json(detail)


@bp.get("/images/<int:image_id>/thumbnail")
def thumbnail(image_id: int):
    """The stored thumbnail of an archived image, served as stored (a 128 px grey JPEG made once at
    indexing; PNG from a catalog written before) with its MIME type."""
    svc = service()
    svc.require_ready()
    _image_row(image_id)
    record_ids(query_id=image_id)
    data, mimetype = svc.thumbnail_bytes(image_id)
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/images/<int:image_id>/preview")
def preview(image_id: int):
    """The stored preview (8-bit grey JPEG, about 1024 px on the long side) of an archived image:
    what the viewer shows a case at. An image indexed without one gets its thumbnail as stored,
    with the ``X-Chextriev-Preview`` header saying so. Immutable per id (a changed file is a new id):
    cached, with an ETag."""
    svc = service()
    svc.require_ready()
    _image_row(image_id)
    record_ids(query_id=image_id)
    data = svc.preview(image_id)
    if data is None:
        data, mimetype = svc.thumbnail_bytes(image_id)
        response = Response(data, mimetype=mimetype)
        response.headers[PREVIEW_HEADER] = _no_preview(image_id)
    else:
        response = Response(data, mimetype="image/jpeg")
        response.headers[PREVIEW_HEADER] = "preview"
    response.headers["Cache-Control"] = "private, max-age=86400"
    response.add_etag()
    return response.make_conditional(request)


def _scaled_boxes(row: dict, height: int, width: int) -> np.ndarray | None:
    """Stored boxes (original pixels) rescaled to an ``height x width`` rendition, or ``None``
    when the original size is unknown (then the model's box provider boxes the rendition)."""
    boxes, original_h, original_w = as_boxes(row.get("boxes")), row.get("height"), row.get("width")
    if boxes is None or not original_h or not original_w:
        return None
    scale = np.array([width / original_w, height / original_h] * 2, dtype=np.float32)
    return boxes * scale


def _require_findings(svc) -> None:
    """A finding heatmap needs a finding head: a model without one answers 409 with the reason."""
    if svc.model.findings_note:
        raise ApiError(409, "no_finding_head", f"no finding heatmap: {svc.model.findings_note}")


def _heatmap_style(value: str | None) -> str:
    style = "overlay" if value is None else value
    if style not in HEATMAP_STYLES:
        raise ApiError(400, "bad_parameter", f"style must be one of {', '.join(HEATMAP_STYLES)}, got {value!r}")
    return style


@bp.get("/images/<int:image_id>/heatmap")
def image_heatmap(image_id: int):
    """The heatmap of ``finding`` on an archived image (Grad-CAM, or a PCAM model's own map: the
    ``X-Chextriev-Heatmap-Method`` header says which), as a PNG: ``style=overlay`` (default, blended
    on the image) or ``style=layer`` (transparent colour layer to draw over the image).

    The server never reads the archive, so the heatmap is computed on the stored preview (the
    thumbnail for an image indexed without one: the ``X-Chextriev-Preview`` header says which)
    with the stored boxes rescaled to it.
    """
    svc = service()
    svc.require_ready()
    check_single(request.args)
    _require_findings(svc)
    finding = parse_finding(request.args.get("finding"), svc.class_names)
    style = _heatmap_style(request.args.get("style"))
    row = _image_row(image_id)
    pixels, made_from = svc.archived_pixels(image_id)
    png = svc.heatmap_png(pixels, _scaled_boxes(row, *pixels.shape), finding, style=style)
    record_ids(query_id=image_id)
    log.info("heatmap of image %d (on its %s)", image_id, made_from)
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.headers[PREVIEW_HEADER] = made_from if made_from == "preview" else _no_preview(image_id)
    response.headers[METHOD_HEADER] = svc.heatmap_method
    return response


@bp.post("/heatmap")
def upload_heatmap():
    """The heatmap of ``finding`` on an uploaded image (the query), as a PNG (method and ``style``
    as above)."""
    svc = service()
    svc.require_ready()
    check_single(request.form)
    check_single(request.args)
    _require_findings(svc)
    finding = parse_finding(request.form.get("finding", request.args.get("finding")), svc.class_names)
    style = _heatmap_style(request.form.get("style", request.args.get("style")))
    upload = _uploaded_image()
    pixels = shrink(upload.pixels, HEATMAP_SIDE)
    response = Response(svc.heatmap_png(pixels, None, finding, style=style), mimetype="image/png")
    response.headers[METHOD_HEADER] = svc.heatmap_method
    return response


def _pacs():
    """The configured PACS connection; 404 ``no_pacs`` without one (the route has nothing to
    search: a client's situation, not a server failure)."""
    connection = current_app.extensions.get("chextriev_pacs")
    if connection is None:
        raise ApiError(404, "no_pacs", "this server has no PACS configured: set pacs_url (and its "
                                       "credentials) in the server's configuration to search by reference")
    return connection


def _public_base() -> str:
    """This server's address as viewers reach it: ``public_url``, else the request's own."""
    return current_app.config.get("PUBLIC_URL") or request.url_root.rstrip("/")


@bp.post("/search/by-reference")
def search_by_reference():
    """Search with a study on the PACS (QIDO-RS, the view rule, WADO-RS; from the index when it
    holds the image), and on request (``store``) file the report into that study (STOW-RS).
    See :mod:`server.reference`."""
    started = time.perf_counter()
    values = _form_values(REFERENCE_FIELD_TYPES)
    k = parse_k(values.get("k"))
    exclude_same_patient = parse_bool("exclude_same_patient", values.get("exclude_same_patient"))
    store = parse_bool("store", values.get("store"))
    settings = parse_search_settings(values)
    uids = {name: parse_uid(name, values.get(name)) for name in ("study_uid", "series_uid", "instance_uid")}
    if uids["study_uid"] is None:
        raise ApiError(400, "bad_parameter", "study_uid is required: the StudyInstanceUID of the study to search with")
    svc = service()
    svc.require_ready()
    filters = parse_filters(values, svc.class_names)
    connection = _pacs()
    key = current_app.config.get("PSEUDONYM_KEY")
    try:
        located = reference.locate(svc, connection, uids["study_uid"], series_uid=uids["series_uid"],
                                   instance_uid=uids["instance_uid"],
                                   max_pixels=current_app.config["MAX_PIXELS"], pseudonym_key=key)
    except InstanceFetchError:
        raise
    except ImageReadError as error:
        raise ApiError(422, "unreadable_image", f"the PACS's image {error.source} cannot be read: "
                                                f"{error.reason}") from None
    timings = dict(located.timings)
    preview = QueryPreview(located.pixels) if located.indexed_id is None else None  # while the model runs
    embedded = time.perf_counter()
    query = reference.query_embedding(svc, located, timings)
    if located.indexed_id is None:
        timings["embed"] = (time.perf_counter() - embedded) * 1000
    image = located.image
    query_info = {"source": "pacs", "read_from": located.source, "format": "dicom",
                  "study_instance_uid": image.study_uid, "series_instance_uid": image.series_uid,
                  "sop_instance_uid": image.instance_uid, "view": image.view,
                  "known_findings": None}
    previewed = time.perf_counter()
    if located.indexed_id is not None:
        row = located.row or {}
        image_id = located.indexed_id
        query_info.update({"id": image_id, "known_findings": known_findings(row),
                           "width": row.get("width"), "height": row.get("height"),
                           "thumbnail_url": url_for("api.thumbnail", image_id=image_id),
                           "preview_url": _preview_url(image_id),
                           "image_url": url_for("api.image", image_id=image_id)})
        record_ids(query_id=image_id)
    else:
        height, width = located.pixels.shape
        query_info.update({"width": int(width), "height": int(height), "preview_url": preview.url()})
    timings["response"] = (time.perf_counter() - previewed) * 1000
    exclude_patients = reference.patient_keys(located, key) if exclude_same_patient else []
    payload, rows = _search_response(
        query, jsonable(query_info), k=k,
        exclude_ids=[located.indexed_id] if located.indexed_id is not None else [],
        exclude_patients=exclude_patients, filters=filters, started=started, timings=timings,
        settings=settings)
    notes = []
    if exclude_same_patient and not exclude_patients:
        notes.append("the PACS names no patient for this study: nothing excluded")
    if located.indexed_id is None and any(row.get("pseudonymised") for row in rows) and not key:
        notes.append("the index is pseudonymised and this server has no pseudonymisation key, so an "
                     "indexed copy of this image cannot be recognised: it may be among its own results")
    result_url = reference.result_link(_public_base(), image)
    payload["result_url"] = result_url
    if store:
        parameters = tuple(f"{name}={value}" for name, value in filters.items()) + (
            ("exclude_same_patient=1",) if exclude_patients else ())
        report = reference.similar_case_report(svc, located, query, rows, k=k, result_url=result_url,
                                               parameters=parameters)
        filed = time.perf_counter()
        payload["report"] = reference.file_report(connection, located, report)
        payload["timing_ms"]["report"] = round((time.perf_counter() - filed) * 1000, 1)
    if notes:
        payload["notes"] = notes
    payload["timing_ms"]["total"] = round((time.perf_counter() - started) * 1000, 1)
    log.info("search by reference (%s): k=%d, %d results in %.0f ms%s", located.source, k,
             len(payload["results"]), payload["timing_ms"]["total"], ", report filed" if store else "")
    return _json(payload)
