"""The OpenAPI 3 description of the ``/api/v1`` routes (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from server.services import HEATMAP_STYLES
from server.validation import AGE_MAX, AGE_MIN, K_DEFAULT, K_MAX, K_MIN

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
IMAGE_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0},
            "description": "integer id of an indexed image (the `id` field of results)"}
COMMON_ERRORS = {"401": _error("missing or wrong bearer token (when the server has one)"),
                 "503": _error("model, index or database not loaded yet (Retry-After set)")}

SEARCH_FIELDS: dict[str, Any] = {
    "k": {"type": "integer", "minimum": K_MIN, "maximum": K_MAX, "default": K_DEFAULT,
          "description": "how many results"},
    "exclude_same_patient": {"type": "boolean", "default": False,
                             "description": "leave out images of the query's patient (by-id; uploads: DICOM "
                                            "PatientID through the catalog's pseudonymisation)"},
    "view": {"type": "string", "description": "only this view position, e.g. PA or AP"},
    "sex": {"type": "string", "enum": ["F", "M"]},
    "age_min": {"type": "integer", "minimum": AGE_MIN, "maximum": AGE_MAX},
    "age_max": {"type": "integer", "minimum": AGE_MIN, "maximum": AGE_MAX},
    "finding": {"type": "string", "description": "only images with this finding (one of the model's class names, "
                                                 "see /readyz): by the known label when the image has labels, else "
                                                 "by the prediction; the response's finding_filter says which"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Finding": {"type": "object", "properties": {
        "name": {"type": "string"}, "probability": {"type": "number"},
        "predicted": {"type": "boolean", "description": "probability >= 0.5"}}},
    "RegionBox": {"type": "object", "properties": {
        "region": {"type": "string"}, "index": {"type": "integer"},
        "box": {"type": "array", "nullable": True, "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                "description": "x1, y1, x2, y2 in pixels of the original image; null = region missing"}}},
    "RegionMatch": {"type": "object", "properties": {
        "region": {"type": "string"}, "index": {"type": "integer"},
        "similarity": {"type": "number", "description": "cosine of the query's and the result's region embeddings"}}},
    "Query": {"type": "object", "properties": {
        "source": {"type": "string", "enum": ["upload", "archive"]},
        "id": {"type": "integer", "description": "archive queries only"},
        "format": {"type": "string", "description": "upload queries: png, jpeg or dicom"},
        "width": {"type": "integer", "nullable": True}, "height": {"type": "integer", "nullable": True},
        "preview_url": {"type": "string", "description": "the image to view the query at: for uploads a data: URL "
                                                         "of a PNG (longest side 1024), for archive queries a route"},
        "thumbnail_url": {"type": "string", "description": "archive queries only"},
        "known_findings": {"type": "array", "nullable": True, "items": {"type": "string"},
                           "description": "labels of an archived query; null for uploads (not known)"},
        "findings": {"type": "array", "items": _ref("Finding"), "description": "model probabilities, most likely first"},
        "predicted_findings": {"type": "array", "items": {"type": "string"},
                               "description": "findings with probability >= 0.5, most likely first"},
        "boxes": {"type": "array", "items": _ref("RegionBox")},
        "box_source": {"type": "string", "description": "given, detector, atlas, detector+atlas (stored: archive)"}}},
    "Result": {"type": "object", "properties": {
        "rank": {"type": "integer"}, "id": {"type": "integer"}, "image_id": {"type": "string"},
        "similarity": {"type": "number", "description": "cosine similarity of the embeddings"},
        "study": {"type": "string", "nullable": True, "description": "pseudonymised study id as stored"},
        "patient": {"type": "string", "nullable": True, "description": "pseudonymised patient id as stored"},
        "view": {"type": "string", "nullable": True}, "sex": {"type": "string", "nullable": True},
        "age": {"type": "number", "nullable": True},
        "known_findings": {"type": "array", "nullable": True, "items": {"type": "string"},
                           "description": "labels from reports or annotations; null when the image's labels are "
                                          "unknown"},
        "predicted_findings": {"type": "array", "nullable": True, "items": {"type": "string"},
                               "description": "the model's findings at probability >= 0.5 (stored at indexing), "
                                              "most likely first; never merged with known_findings"},
        "shared_findings": {"type": "array", "items": {"type": "string"},
                            "description": "known findings that the query is predicted to have"},
        "matched_regions": {"type": "array", "items": _ref("RegionMatch"), "description": "best three regions"},
        "finding_filter": _ref("FindingFilterMatch"),
        "thumbnail_url": {"type": "string"},
        "preview_url": {"type": "string", "description": "the image to view the case at (for now the thumbnail)"},
        "image_url": {"type": "string"}, **_DICOM_FIELDS}},
    "FindingFilterMatch": {"type": "object", "description": "with a finding filter only: how this image matched it",
                           "properties": {"finding": {"type": "string"},
                                          "matched_on": {"type": "string", "enum": ["known", "predicted"]}}},
    "FindingFilter": {"type": "object", "description": "with a finding filter only", "properties": {
        "finding": {"type": "string"},
        "rule": {"type": "string", "description": "known label when the image has labels, else predicted >= 0.5"},
        "matched_on": {"type": "object", "description": "how many results matched on known labels and on "
                                                        "predictions", "properties": {
                                                            "known": {"type": "integer"},
                                                            "predicted": {"type": "integer"}}}}},
    "SearchResponse": {"type": "object", "properties": {
        "query": _ref("Query"), "k": {"type": "integer"}, "filters": {"type": "object"},
        "exclude_same_patient": {"type": "boolean"}, "index_size": {"type": "integer"},
        "checkpoint_id": {"type": "string"}, "results": {"type": "array", "items": _ref("Result")},
        "finding_filter": _ref("FindingFilter"),
        "notes": {"type": "array", "items": {"type": "string"}},
        "timing_ms": {"type": "object", "additionalProperties": {"type": "number"},
                      "description": "milliseconds per stage: decode, wait, boxes, model, embed (uploads), "
                                     "search, response, total"}}},
    "Image": {"type": "object", "description": "an indexed image's catalog row", "properties": {
        "id": {"type": "integer"}, "image_id": {"type": "string"}, "patient": {"type": "string", "nullable": True},
        "study": {"type": "string", "nullable": True}, "view": {"type": "string", "nullable": True},
        "known_findings": {"type": "array", "nullable": True, "items": {"type": "string"}},
        "predicted_findings": {"type": "array", "items": _ref("Finding")},
        "region_probabilities": {"type": "array", "nullable": True, "items": {"type": "object"}},
        "boxes": {"type": "array", "items": _ref("RegionBox")}, "box_source": {"type": "string"},
        "class_names": {"type": "array", "items": {"type": "string"}}, "thumbnail_url": {"type": "string"},
        "preview_url": {"type": "string"}, **_DICOM_FIELDS}},
    "Ready": {"type": "object", "properties": {
        "ready": {"type": "boolean"}, "state": {"type": "string", "enum": ["idle", "loading", "ready", "failed"]},
        "error": {"type": "string"}, "index_size": {"type": "integer"}, "index_build_id": {"type": "string"},
        "checkpoint_id": {"type": "string"}, "class_names": {"type": "array", "items": {"type": "string"}},
        "embedding_dim": {"type": "integer"}, "has_regions": {"type": "boolean"},
        "load_seconds": {"type": "number"},
        "precision": {"type": "string", "enum": ["fp32", "bf16"],
                      "description": "the numerics the model runs in (--precision; auto resolved)"},
        "worker_pid": {"type": "integer", "description": "the serving process (one per --workers)"}}},
}


def _search_body(with_image: bool) -> dict:
    properties = dict(SEARCH_FIELDS)
    required = []
    if with_image:
        properties = {"image": {"type": "string", "format": "binary",
                                "description": "PNG, JPEG or DICOM; checked by decoding, not by name"}, **properties}
        required = ["image"]
    schema = {"type": "object", "properties": properties, "required": required}
    content = {"multipart/form-data": {"schema": schema}}
    if not with_image:
        content["application/x-www-form-urlencoded"] = {"schema": schema}
        content["application/json"] = {"schema": schema}
    return {"required": with_image, "content": content}


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.0 document (paths relative to the server URL ``/api/v1``)."""
    finding_query = {"name": "finding", "in": "query", "required": True, "schema": {"type": "string"},
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
                "200": {"description": "alive", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": COMMON_ERRORS["401"]}}},
            "/readyz": {"get": {"summary": "readiness: model, index and database loaded", "responses": {
                "200": _json("ready, with index size, checkpoint id and index build id", "Ready"),
                "503": _json("not ready yet (or loading failed: see error)", "Ready"),
                "401": COMMON_ERRORS["401"]}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": {"description": "OpenAPI 3 document"}, "401": COMMON_ERRORS["401"]}}},
            "/search": {"post": {
                "summary": "similar cases for an uploaded image",
                "requestBody": _search_body(True),
                "responses": {"200": _json("the query's findings and boxes, and the top k", "SearchResponse"),
                              "400": _error("bad k, bad filter, missing or unreadable image (says why)"),
                              "413": _error("upload above MAX_CONTENT_LENGTH, or image above MAX_PIXELS"),
                              **COMMON_ERRORS}}},
            "/search/by-id/{image_id}": {"post": {
                "summary": "similar cases for an indexed image (stored vector, itself excluded)",
                "parameters": [IMAGE_ID], "requestBody": _search_body(False),
                "responses": {"200": _json("as /search, query.source = archive", "SearchResponse"),
                              "400": _error("bad k or filter"), "404": _error("unknown id"), **COMMON_ERRORS}}},
            "/images/{image_id}": {"get": {
                "summary": "metadata, findings, region probabilities and boxes of an indexed image",
                "parameters": [IMAGE_ID],
                "responses": {"200": _json("the image", "Image"), "404": _error("unknown id"), **COMMON_ERRORS}}},
            "/images/{image_id}/thumbnail": {"get": {
                "summary": "stored thumbnail", "parameters": [IMAGE_ID],
                "responses": {"200": {"description": "PNG", **PNG}, "404": _error("unknown id"), **COMMON_ERRORS}}},
            "/images/{image_id}/heatmap": {"get": {
                "summary": "Grad-CAM overlay of a finding on an indexed image (computed on the stored thumbnail: "
                           "the server never reads the archive)",
                "parameters": [IMAGE_ID, finding_query, style_query],
                "responses": {"200": {"description": "PNG", **PNG}, "400": _error("missing or unknown finding, bad style"),
                              "404": _error("unknown id"), **COMMON_ERRORS}}},
            "/heatmap": {"post": {
                "summary": "Grad-CAM overlay of a finding on an uploaded image (the query)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image", "finding"],
                    "properties": {"image": {"type": "string", "format": "binary"},
                                   "finding": {"type": "string"},
                                   "style": {"type": "string", "enum": list(HEATMAP_STYLES)}}}}}},
                "responses": {"200": {"description": "PNG", **PNG},
                              "400": _error("missing/unknown finding, missing or unreadable image"),
                              "413": _error("too large"), **COMMON_ERRORS}}},
        },
    }
