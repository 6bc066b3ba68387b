"""The OpenAPI 3 description of the ``/api/v1`` routes (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from server.validation import AGE_MAX, AGE_MIN, K_DEFAULT, K_MAX, K_MIN

API_VERSION = "1.0.0"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


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
    "finding": {"type": "string", "description": "only images with this known finding (one of the model's "
                                                 "class names, see /readyz)"},
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
        "preview": {"type": "string", "description": "upload queries: data: URL of a PNG preview (longest side 512)"},
        "findings": {"type": "array", "items": _ref("Finding")},
        "predicted_findings": {"type": "array", "items": {"type": "string"}},
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
                           "description": "null when the archive image's labels are unknown"},
        "shared_findings": {"type": "array", "items": {"type": "string"},
                            "description": "known findings that the query is predicted to have"},
        "matched_regions": {"type": "array", "items": _ref("RegionMatch"), "description": "best three regions"},
        "thumbnail_url": {"type": "string"}, "image_url": {"type": "string"}}},
    "SearchResponse": {"type": "object", "properties": {
        "query": _ref("Query"), "k": {"type": "integer"}, "filters": {"type": "object"},
        "exclude_same_patient": {"type": "boolean"}, "index_size": {"type": "integer"},
        "checkpoint_id": {"type": "string"}, "results": {"type": "array", "items": _ref("Result")},
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
        "class_names": {"type": "array", "items": {"type": "string"}}, "thumbnail_url": {"type": "string"}}},
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
                "parameters": [IMAGE_ID, finding_query],
                "responses": {"200": {"description": "PNG", **PNG}, "400": _error("missing or unknown finding"),
                              "404": _error("unknown id"), **COMMON_ERRORS}}},
            "/heatmap": {"post": {
                "summary": "Grad-CAM overlay of a finding on an uploaded image (the query)",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image", "finding"],
                    "properties": {"image": {"type": "string", "format": "binary"},
                                   "finding": {"type": "string"}}}}}},
                "responses": {"200": {"description": "PNG", **PNG},
                              "400": _error("missing/unknown finding, missing or unreadable image"),
                              "413": _error("too large"), **COMMON_ERRORS}}},
        },
    }
