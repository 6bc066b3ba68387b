"""The OpenAPI 3 description of the ``/api/v1`` routes (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.services import HEATMAP_STYLES
from server.validation import (
    AGE_MAX,
    AGE_MIN,
    FALSE_WORDS,
    K_DEFAULT,
    K_MAX,
    K_MIN,
    NPROBE_MAX,
    NPROBE_MIN,
    RERANK_MAX,
    RERANK_MIN,
    TEXT_MAX_CHARS,
    TRUE_WORDS,
)

#: The largest catalog id (positive 64-bit integers); see ``server.api.MAX_IMAGE_ID``.
MAX_IMAGE_ID = 2**63 - 1

API_VERSION = "1.0.0"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_UID = {"type": "string", "nullable": True,
        "description": "DICOM UID as stored (a keyed HMAC when the index is pseudonymised)"}
_DICOM_FIELDS = {
    "study_instance_uid": _UID, "series_instance_uid": _UID, "sop_instance_uid": _UID,
    "viewer_url": {"type": "string", "nullable": True,
                   "description": "PACS viewer link (only with --viewer-url; null when it cannot "
                                  "be built, e.g. a pseudonymised index: see viewer_note)"},
    "viewer_note": {"type": "string", "description": "why viewer_url is null"},
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


PNG = {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
#: A stored image served as stored: JPEG (what indexing makes), PNG (thumbnails of older catalogs).
STORED_IMAGE = {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                            "image/png": {"schema": {"type": "string", "format": "binary"}}}}
IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "example": 1,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_IMAGE_ID},
            "description": "integer id of an indexed image (the `id` field of results); any other "
                           "number, or an image that was skipped, failed or removed, is 404"}
COMMON_ERRORS = {"401": _error("missing or wrong bearer token (when the server has one)"),
                 "403": _error("the server has no token and the client is not on its machine"),
                 "503": _error("model, index or database not loaded yet, or the load failed "
                                "(Retry-After: seconds until the next attempt)")}
#: Errors every POST route can answer before it reads its fields.
FORM_ERRORS = {"413": _error("body above MAX_CONTENT_LENGTH, or a form with more than MAX_FORM_PARTS "
                             "parts or a field above MAX_FORM_MEMORY_SIZE (the message says which)")}

SEARCH_FIELDS: dict[str, Any] = {
    "k": {"type": "integer", "minimum": K_MIN, "maximum": K_MAX, "default": K_DEFAULT,
          "description": "how many results"},
    "exclude_same_patient": {"type": "string", "enum": [*TRUE_WORDS, *FALSE_WORDS], "default": "0",
                             "description": "leave out images of the query's patient (by-id; uploads: DICOM "
                                            "PatientID through the catalog's pseudonymisation; the response "
                                            "says when it could not be applied); empty = no"},
    "view": {"type": "string", "description": "only this view position, e.g. PA or AP"},
    "sex": {"type": "string", "pattern": "^\\s*[FfMm]?\\s*$", "description": "F or M (empty: any)"},
    "age_min": {"type": "integer", "minimum": AGE_MIN, "maximum": AGE_MAX},
    "age_max": {"type": "integer", "minimum": AGE_MIN, "maximum": AGE_MAX},
    "finding": {"type": "string", "description": "only images with this finding (one of the model's class names, "
                                                 "see /readyz): by the known label when the image has labels, else "
                                                 "by the prediction; the response's finding_filter says which"},
    "nprobe": {"type": "integer", "minimum": NPROBE_MIN, "maximum": NPROBE_MAX,
               "description": "IVF indexes: inverted lists scanned (more: slower, closer to exact; capped at "
                              "the index's list count). Default: the build's (/readyz search.nprobe); "
                              "ignored by flat indexes. The response's search says what was used"},
    "rerank": {"type": "integer", "minimum": RERANK_MIN, "maximum": RERANK_MAX,
               "description": "IVF-PQ indexes: rerank x k candidates re-scored with the exact vectors. "
                              "Default: the build's (/readyz search.rerank); ignored by other index types"},
}

_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_NINT = {"type": "integer", "nullable": True}
_NNUM = {"type": "number", "nullable": True}
_NAMES = {"type": "array", "items": _STR}
_NNAMES = {"type": "array", "items": _STR, "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "description": "stable, machine-readable"},
                       "message": {"type": "string", "description": "what went wrong and what to do"},
                       "found": {"type": "array", "items": _ref("StudyInstance"),
                                 "description": "no_frontal_image only: what the study holds"}}}}},
    "StudyInstance": {"type": "object", "properties": {
        "series_uid": _STR, "instance_uid": _STR, "modality": _NSTR, "view": _NSTR}},
    "StoredReport": {"type": "object", "description": "the DICOM SR filed into the query's study (STOW-RS)",
                     "required": ["study_instance_uid", "series_instance_uid", "sop_instance_uid"],
                     "properties": {"study_instance_uid": _STR, "series_instance_uid": _STR,
                                    "sop_instance_uid": _STR, "sop_class_uid": _STR,
                                    "timing_ms": {"type": "object", "additionalProperties": _NNUM}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string",
                                                                                    "enum": ["ok"]}}},
    "Finding": {"type": "object", "required": ["name", "probability", "predicted"], "properties": {
        "name": _STR, "probability": {**_NNUM, "description": "null when not known"},
        "predicted": {"type": "boolean", "description": "probability >= the checkpoint's threshold for the class (chosen on validation, max F1; 0.5 without one)"}}},
    "Abnormality": {"type": "object", "nullable": True, "required": ["probability", "abnormal", "threshold", "label"],
                    "description": "an abnormality model's (class list 'abnormal': any finding vs none) one output; "
                                   "null for other models",
                    "properties": {
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "abnormal": {"type": "boolean", "description": "probability >= threshold"},
        "threshold": {"type": "number", "description": "the checkpoint's (chosen on validation, max F1; 0.5 without one)"},
        "label": {"type": "string", "description": "what the viewer shows, e.g. 'abnormal: 0.83'"}}},
    "RegionBox": {"type": "object", "required": ["region", "index", "box"], "properties": {
        "region": _STR, "index": {"type": "integer", "minimum": 0, "maximum": 17},
        "box": {"type": "array", "nullable": True, "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "x1, y1, x2, y2 in pixels of the original image; null = region missing"}}},
    "RegionMatch": {"type": "object", "required": ["region", "index", "similarity"], "properties": {
        "region": _STR, "index": {"type": "integer", "minimum": 0, "maximum": 17},
        "similarity": {**_NNUM, "description": "image queries: cosine of the query's and the result's region "
                                               "embeddings; text queries: cosine of the text's embedding and the "
                                               "result's region embedding"},
        "box": {"type": "array", "nullable": True, "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "text queries only: the region's stored box in the result, x1, y1, x2, y2 in "
                               "pixels of the original image"}}},
    "RegionProbabilities": {"type": "object", "required": ["region", "index", "probabilities"], "properties": {
        "region": _STR, "index": {"type": "integer"},
        "probabilities": {"type": "object", "additionalProperties": _NNUM}}},
    "Query": {"type": "object", "required": ["source", "findings", "predicted_findings", "boxes"], "properties": {
        "source": {"type": "string", "enum": ["upload", "archive", "pacs", "text"]},
        "text": {**_STR, "description": "text queries: the text searched for (as sent, white space around it "
                                        "stripped)"},
        "read_from": {"type": "string", "enum": ["index", "pacs"],
                      "description": "by-reference queries: answered from the index (the image is indexed: "
                                     "its stored vector) or fetched from the PACS and embedded"},
        "study_instance_uid": {**_STR, "description": "by-reference queries: the query image's UIDs on the PACS"},
        "series_instance_uid": _STR, "sop_instance_uid": _STR,
        "id": {"type": "integer", "description": "archive queries, and by-reference queries answered "
                                                 "from the index"},
        "image_id": {**_NSTR, "description": "archive queries only: the stored image id (a pseudonym "
                                             "when the index is pseudonymised)"},
        "study": _NSTR, "patient": _NSTR, "view": _NSTR,
        "format": {"type": "string", "description": "upload queries: png, jpeg or dicom"},
        "width": _NINT, "height": _NINT,
        "preview_url": {"type": "string", "description": "the image to view the query at: for uploads a data: URL "
                                                         "of a grey JPEG (longest side 1024, as the archive's previews), for archive "
                                                         "queries a route"},
        "thumbnail_url": {"type": "string", "description": "archive queries only"},
        "image_url": {"type": "string", "description": "archive queries only"},
        "known_findings": {**_NNAMES, "description": "labels of an archived query; null for uploads (not known)"},
        "findings": {"type": "array", "items": _ref("Finding"), "nullable": True,
                     "description": "model probabilities, most likely first; null for a model without a finding "
                                    "head (findings_note says why)"},
        "predicted_findings": {**_NNAMES, "description": "findings at or above their class thresholds (see "
                                                         "Finding.predicted), most likely first; null for a model "
                                                         "without a finding head"},
        "findings_note": {**_STR, "description": "only for a model without a finding head (a label-free encoder "
                                                 "model): why there are no predicted findings"},
        "abnormality": _ref("Abnormality"),
        "boxes": {"type": "array", "items": _ref("RegionBox"), "nullable": True,
                  "description": "null for text queries (no image)"},
        "box_source": {**_NSTR, "description": "given, detector, atlas, detector+atlas (stored: archive); null "
                                               "for text queries"}}},
    "Result": {"type": "object", "required": ["rank", "id", "similarity", "thumbnail_url", "preview_url"],
               "properties": {
        "rank": {"type": "integer", "minimum": 1}, "id": {"type": "integer", "minimum": 1},
        "image_id": {**_NSTR, "description": "the stored image id (a pseudonym when pseudonymised)"},
        "similarity": {**_NNUM, "description": "cosine similarity of the embeddings"},
        "study": {**_NSTR, "description": "pseudonymised study id as stored"},
        "patient": {**_NSTR, "description": "pseudonymised patient id as stored"},
        "view": _NSTR, "sex": _NSTR, "age": _NNUM,
        "known_findings": {**_NNAMES, "description": "labels from reports or annotations; null when the image's "
                                                     "labels are unknown"},
        "predicted_findings": {**_NNAMES, "description": "the model's findings at its class thresholds (probabilities stored at "
                                                         "indexing), most likely first; never merged with known_findings"},
        "shared_findings": {**_NAMES, "description": "known findings that the query is predicted to have"},
        "abnormality": _ref("Abnormality"),
        "matched_regions": {"type": "array", "items": _ref("RegionMatch"),
                            "description": "best three regions: where query and result agree (image queries), "
                                           "or where the text points in the result, with their boxes (text "
                                           "queries)"},
        "finding_filter": _ref("FindingFilterMatch"),
        "thumbnail_url": _STR,
        "preview_url": {"type": "string", "description": "the image to view the case at: its preview route"},
        "image_url": _STR, **_DICOM_FIELDS}},
    "FindingFilterMatch": {"type": "object", "description": "with a finding filter only: how this image matched it",
                           "properties": {"finding": _STR,
                                          "matched_on": {"type": "string", "enum": ["known", "predicted"]}}},
    "FindingFilter": {"type": "object", "description": "with a finding filter only", "properties": {
        "finding": _STR,
        "rule": {"type": "string", "description": "known label when the image has labels, else predicted >= 0.5"},
        "matched_on": {"type": "object", "description": "how many results matched on known labels and on "
                                                        "predictions", "properties": {
                                                            "known": {"type": "integer"},
                                                            "predicted": {"type": "integer"}}}}},
    "SearchResponse": {"type": "object", "required": ["query", "k", "results", "exclude_same_patient"],
                       "properties": {
        "query": _ref("Query"), "k": {"type": "integer", "minimum": K_MIN, "maximum": K_MAX},
        "filters": {"type": "object"},
        "exclude_same_patient": {"type": "boolean", "description": "whether the query's patient was left out "
                                                                   "(false, with a note, when it could not be)"},
        "index_size": {"type": "integer"}, "checkpoint_id": _NSTR,
        "search": _ref("SearchSettings"),
        "results": {"type": "array", "items": _ref("Result"), "maxItems": K_MAX},
        "finding_filter": _ref("FindingFilter"),
        "notes": {**_NAMES, "description": "what the server could not do as asked, in words"},
        "matched_regions_by": {"type": "string", "enum": ["text"],
                               "description": "text queries: the results' matched_regions are the regions the "
                                              "text points at"},
        "result_url": {**_STR, "description": "by-reference: the web page's address of this search "
                                              "(public_url, else the request's)"},
        "report": _ref("StoredReport"),
        "timing_ms": {"type": "object", "additionalProperties": _NNUM,
                      "description": "milliseconds per stage: decode, wait, boxes, model, embed (uploads), "
                                     "search, response, total; by-reference also qido, lookup, fetch "
                                     "(the PACS) and report (filing it); text: wait, model (the text tower), "
                                     "embed, search, response, regions, total"}}},
    "Image": {"type": "object", "description": "an indexed image's catalog row (never its source path)",
              "required": ["id", "boxes", "class_names", "thumbnail_url", "preview_url"], "properties": {
        "id": {"type": "integer"}, "image_id": _NSTR, "patient": _NSTR, "study": _NSTR, "view": _NSTR,
        "sex": _NSTR, "age": _NNUM, "study_date": {**_NSTR, "description": "YYYYMMDD; shifted per patient, or only "
                                                                         "the year, when pseudonymised"},
        "width": _NINT, "height": _NINT, "format": _NSTR, "box_source": _NSTR,
        "known_findings": _NNAMES,
        "predicted_findings": {"type": "array", "items": _ref("Finding"), "nullable": True,
                               "description": "null for a model without a finding head (findings_note says why)"},
        "findings_note": {**_STR, "description": "only for a model without a finding head: why there are no "
                                                 "predicted findings"},
        "abnormality": _ref("Abnormality"),
        "region_probabilities": {"type": "array", "nullable": True, "items": _ref("RegionProbabilities")},
        "boxes": {"type": "array", "items": _ref("RegionBox")},
        "class_names": _NAMES, "thumbnail_url": _STR, "preview_url": _STR,
        "preview_source": {"type": "string", "enum": ["preview", "thumbnail"],
                           "description": "what preview_url serves: the stored preview, or the thumbnail "
                                          "for an image indexed without one"},
        **_DICOM_FIELDS}},
    "SearchSettings": {"type": "object", "required": ["index_type", "nprobe", "nlist", "rerank"],
                       "description": "the search settings used (or, in /readyz, the build's defaults)",
                       "properties": {
        "index_type": {"type": "string", "enum": ["flat", "ivf-flat", "ivf-pq"]},
        "nprobe": {**_NINT, "description": "inverted lists scanned (null: flat index)"},
        "nlist": {**_NINT, "description": "inverted lists of the index (null: flat index)"},
        "rerank": {**_NINT, "description": "re-rank depth x k (null unless ivf-pq)"}}},
    "Ready": {"type": "object", "required": ["ready", "state"], "properties": {
        "ready": {"type": "boolean"}, "state": {"type": "string", "enum": ["idle", "loading", "ready", "failed"]},
        "error": _STR,
        "retry_after_s": {"type": "integer", "description": "failed: seconds until the next load attempt "
                                                             "(also the Retry-After header)"},
        "reload_error": {**_STR, "description": "the last new index build could not be loaded: the "
                                                 "previous one is still served, retried with backoff"},
        "reloads": {"type": "integer", "description": "index builds picked up since start-up"},
        "search": _ref("SearchSettings"),
        "bundle": {"type": "object", "nullable": True,
                   "description": "what the index folder records about its build (checkpoint id, whether "
                                  "a copy is inside, detector, boxes, model summary, build parameters)"}, "index_size": {"type": "integer"}, "index_build_id": _NSTR,
        "checkpoint_id": _NSTR, "class_names": _NAMES,
        "embedding_dim": {"type": "integer"}, "has_regions": {"type": "boolean"},
        "has_findings": {"type": "boolean", "description": "false for a label-free encoder model (chextriev model "
                                                           "init): no finding head, no predicted findings, no "
                                                           "finding heatmaps"},
        "findings_note": {**_NSTR, "description": "why the model predicts no findings (null when it does)"},
        "text_search": {"type": "boolean", "description": "POST /search/text works: a CLIP-family encoder model "
                                                          "whose image, region and text embeddings share one space"},
        "text_search_note": {**_NSTR, "description": "why there is no search by text (null when there is)"},
        "load_seconds": _NNUM,
        "precision": {"type": "string", "enum": ["fp32", "bf16"],
                      "description": "the numerics the model runs in (--precision; auto resolved)"},
        "compiled": {"type": "boolean",
                     "description": "the backbone trunk runs compiled ahead of time (--compile on, "
                                    "the default; false when off or when no compiled trunk could be "
                                    "had, which the log explains)"},
        "worker_pid": {"type": "integer", "description": "the serving process (one per --workers)"}}},
}


def _finding(class_names: Sequence[str] | None, *, optional: bool) -> dict:
    """The ``finding`` field: one of the model's class names (listed once the model is loaded)."""
    schema: dict[str, Any] = {"type": "string"}
    if class_names:
        schema["enum"] = [*class_names, *([""] if optional else [])]
    return schema


def _search_body(with_image: bool, class_names: Sequence[str] | None) -> dict:
    properties = {**SEARCH_FIELDS, "finding": {**SEARCH_FIELDS["finding"],
                                               **_finding(class_names, optional=True)}}
    required = []
    if with_image:
        properties = {"image": {"type": "string", "format": "binary",
                                "description": "PNG, JPEG or DICOM; checked by decoding, not by name"}, **properties}
        required = ["image"]
    schema = {"type": "object", "properties": properties, "required": required}
    content = {"multipart/form-data": {"schema": schema}}
    if not with_image:
        content["application/x-www-form-urlencoded"] = {"schema": schema}
        json_properties = {**properties,  # JSON bodies carry typed values
                           "exclude_same_patient": {"type": "boolean", "default": False},
                           "sex": {"type": "string", "pattern": properties["sex"]["pattern"]}}
        content["application/json"] = {"schema": {**schema, "properties": json_properties}}
    return {"required": with_image, "content": content}


_UID_FIELD = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)*$", "maxLength": 64}


def _text_body(class_names: Sequence[str] | None) -> dict:
    """The body of a search by text: ``text`` and the search fields of :func:`_search_body`
    (no ``exclude_same_patient``: a text has no patient). Never in the query string."""
    body = _search_body(False, class_names)
    text = {"type": "string", "minLength": 1, "maxLength": TEXT_MAX_CHARS,
            "description": f"what to look for, in words (e.g. 'left pleural effusion'): 1 to {TEXT_MAX_CHARS} "
                           "characters once stripped, no control characters. Never logged"}
    for content in body["content"].values():
        schema = content["schema"]
        properties = {name: value for name, value in schema["properties"].items() if name != "exclude_same_patient"}
        content["schema"] = {**schema, "properties": {"text": text, **properties}, "required": ["text"]}
    return {**body, "required": True}


def _reference_body(class_names: Sequence[str] | None) -> dict:
    """The body of a search by reference: the study (series, instance), ``store``, and the
    search fields of :func:`_search_body`."""
    body = _search_body(False, class_names)
    extra = {"study_uid": {**_UID_FIELD, "description": "StudyInstanceUID of the study on the PACS"},
             "series_uid": {**_UID_FIELD, "description": "only this series of it"},
             "instance_uid": {**_UID_FIELD, "description": "this instance (SOPInstanceUID)"}}
    store_form = {"type": "string", "enum": [*TRUE_WORDS, *FALSE_WORDS], "default": "0",
                  "description": "file the report (a DICOM SR) into the study on the PACS"}
    for media, content in body["content"].items():
        schema = content["schema"]
        store = {"type": "boolean", "default": False} if media == "application/json" else store_form
        content["schema"] = {**schema, "properties": {**extra, "store": store, **schema["properties"]},
                             "required": ["study_uid"]}
    return {**body, "required": True}


def openapi_spec(class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document (paths relative to the server URL ``/api/v1``); with the loaded
    model's ``class_names`` the ``finding`` fields list them."""
    finding_query = {"name": "finding", "in": "query", "required": True,
                     "schema": _finding(class_names, optional=False),
                     "description": "a class name of the model (see /readyz)"}
    style_query = {"name": "style", "in": "query", "required": False,
                   "schema": {"type": "string", "enum": list(HEATMAP_STYLES), "default": "overlay"},
                   "description": "overlay: RGB, heat blended on the image; layer: RGBA colour layer (alpha in "
                                  "proportion to the heat) to draw over the image"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "CheXtriev similar-case search", "version": API_VERSION,
                 "description": "Case-based retrieval of chest radiographs. Every route needs "
                                "`Authorization: Bearer <token>` when the server is started with a token."},
        "servers": [{"url": "/api/v1"}],
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {
                "200": _json("alive", "Health"), "401": COMMON_ERRORS["401"], "403": COMMON_ERRORS["403"]}}},
            "/readyz": {"get": {"summary": "readiness: model, index and database loaded", "responses": {
                "200": _json("ready, with index size, checkpoint id and index build id", "Ready"),
                "503": _json("not ready yet (or loading failed: see error)", "Ready"),
                "401": COMMON_ERRORS["401"], "403": COMMON_ERRORS["403"]}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": {"description": "OpenAPI 3 document",
                        "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}}},
                "401": COMMON_ERRORS["401"], "403": COMMON_ERRORS["403"]}}},
            "/search": {"post": {
                "summary": "similar cases for an uploaded image",
                "requestBody": _search_body(True, class_names),
                "responses": {"200": _json("the query's findings and boxes, and the top k", "SearchResponse"),
                              "400": _error("bad k, bad filter, missing or unreadable image: not PNG/JPEG/DICOM, "
                                            "corrupt, unknown transfer syntax, malformed or inconsistent image "
                                            "fields, non-finite pixel values (says why)"),
                              "413": _error("upload above MAX_CONTENT_LENGTH, too many form parts, or an image whose "
                                            "header announces more than MAX_PIXELS per frame or 4 bytes a pixel of "
                                            "pixel data (refused before decoding)"),
                              **COMMON_ERRORS}}},
            "/search/by-id/{image_id}": {"post": {
                "summary": "similar cases for an indexed image (stored vector, itself excluded)",
                "parameters": [IMAGE_ID], "requestBody": _search_body(False, class_names),
                "responses": {"200": _json("as /search, query.source = archive", "SearchResponse"),
                              "400": _error("bad k or filter, or a JSON body that is not an object"),
                              "404": _error("not an indexed image"), **FORM_ERRORS, **COMMON_ERRORS}}},
            "/search/by-reference": {"post": {
                "summary": "similar cases for a study on the PACS: its frontal image found by QIDO-RS (the "
                           "indexer's view rule), answered from the index when it holds it, else fetched "
                           "with WADO-RS and embedded (never indexed); store=true files the report (DICOM "
                           "SR, TID 1500) into that study with STOW-RS",
                "requestBody": _reference_body(class_names),
                "responses": {"200": _json("as /search, query.source = pacs; report when stored", "SearchResponse"),
                              "400": _error("missing or malformed study_uid, series_uid, instance_uid, bad k "
                                            "or filter"),
                              "404": _error("the PACS holds no such study (series, instance): "
                                            "unknown_study; or this server has no PACS configured "
                                            "(pacs_url): no_pacs"),
                              "422": _error("the study holds no frontal radiograph (error.found lists what "
                                            "it holds), or its image cannot be read"),
                              "502": _error("the PACS refused the server's credentials or failed (names the "
                                            "PACS, never a credential)"),
                              **FORM_ERRORS, **COMMON_ERRORS,
                              "503": _error("the PACS is unreachable (Retry-After), or the model, index or "
                                            "database is not loaded yet")}}},
            "/search/text": {"post": {
                "summary": "archived images nearest a text, by the model's own image-text similarity (a "
                           "CLIP-family encoder model: BiomedCLIP, CheXzero, MedSigLIP), each with the regions "
                           "the text points at as boxes",
                "requestBody": _text_body(class_names),
                "responses": {"200": _json("as /search, query.source = text; each result's matched_regions are the "
                                           "regions the text points at, with their boxes", "SearchResponse"),
                              "400": _error("missing, empty, too long text or a control character in it, text "
                                            "in the query string, bad k or filter, a JSON body that is not an "
                                            "object"),
                              "409": _error("the model cannot search by text (no text tower in its embedding's "
                                            "space; the message says why, as /readyz text_search_note)"),
                              **FORM_ERRORS, **COMMON_ERRORS}}},
            "/images/{image_id}": {"get": {
                "summary": "metadata, findings, region probabilities and boxes of an indexed image",
                "parameters": [IMAGE_ID],
                "responses": {"200": _json("the image", "Image"), "404": _error("not an indexed image"),
                              **COMMON_ERRORS}}},
            "/images/{image_id}/thumbnail": {"get": {
                "summary": "stored thumbnail, served as stored (grey JPEG, 128 px on the long side; PNG in "
                           "catalogs written before)", "parameters": [IMAGE_ID],
                "responses": {"200": {"description": "JPEG (or PNG)", **STORED_IMAGE},
                              "404": _error("not an indexed image"),
                              **COMMON_ERRORS}}},
            "/images/{image_id}/preview": {"get": {
                "summary": "stored preview (grey JPEG, about 1024 px on the long side); the thumbnail as stored for an "
                           "image indexed without one, the X-Chextriev-Preview header says which",
                "parameters": [IMAGE_ID],
                "responses": {"200": {"description": "JPEG (or PNG)", **STORED_IMAGE},
                              "304": {"description": "not modified (If-None-Match)"},
                              "404": _error("not an indexed image"), **COMMON_ERRORS}}},
            "/images/{image_id}/heatmap": {"get": {
                "summary": "heatmap overlay of a finding on an indexed image: Grad-CAM, or a PCAM model's own "
                           "map (the X-Chextriev-Heatmap-Method header says which); computed on its stored "
                           "preview, or the thumbnail without one: the server never reads the archive",
                "parameters": [IMAGE_ID, finding_query, style_query],
                "responses": {"200": {"description": "PNG", **PNG}, "400": _error("missing or unknown finding, bad style"),
                              "409": _error("the model has no finding head (a label-free encoder model)"),
                              "404": _error("not an indexed image"), **COMMON_ERRORS}}},
            "/heatmap": {"post": {
                "summary": "heatmap overlay of a finding on an uploaded image (the query; method as above)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image", "finding"],
                    "properties": {"image": {"type": "string", "format": "binary"},
                                   "finding": _finding(class_names, optional=False),
                                   "style": {"type": "string", "enum": list(HEATMAP_STYLES)}}}}}},
                "responses": {"200": {"description": "PNG", **PNG},
                              "400": _error("missing/unknown finding, bad style, missing or unreadable image"),
                              "409": _error("the model has no finding head (a label-free encoder model)"),
                              "413": _error("as for /search"), **COMMON_ERRORS}}},
        },
    }
