"""JSON errors: one exception type for the API and the handlers that render every error the app
returns as ``{"error": {"code": ..., "message": ...}}`` with the right status; and the JSON
provider that refuses to write NaN or infinity (``allow_nan=False``: a response is valid JSON or
it is not sent).

The WSGI server's own errors (a malformed request line, headers too large: gunicorn answers them
before the app sees the request) get the same JSON body from :mod:`server.serving`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

#: HTTP status -> stable error code, for the errors Flask/Werkzeug and the WSGI server raise.
HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


class ApiError(Exception):
    """An error answered as JSON: ``status`` (HTTP), ``code`` (stable, machine-readable) and a
    message a user can act on."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with ``allow_nan=False``: a NaN or infinity anywhere in a response
    raises instead of writing the invalid literal ``NaN`` (the handler below answers 500, and
    the code that built the value is the bug)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def error_body(status: int, code: str, message: str) -> bytes:
    """The JSON error body (bytes), for callers outside a Flask request (the WSGI server)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def too_large_message() -> str:
    """What a 413 from the request parser means: the body above ``MAX_CONTENT_LENGTH``, or a
    form with too many parts or too large a field."""
    config = current_app.config
    limit = config.get("MAX_CONTENT_LENGTH")
    length = request.content_length
    if limit and (length is None or length > limit):
        return (f"request body larger than the upload limit of {limit} bytes (MAX_CONTENT_LENGTH, "
                "--max-upload-mb)")
    return (f"the form has more than {config.get('MAX_FORM_PARTS')} parts (MAX_FORM_PARTS), or a "
            f"field other than the file is larger than {config.get('MAX_FORM_MEMORY_SIZE')} bytes "
            "(MAX_FORM_MEMORY_SIZE): send the image as the one file field 'image' and each option "
            "once as a short field")


def catalog_unavailable(error: Exception):
    """503 for :class:`indexer.db.CatalogUnavailableError` (matched by name: building the app
    imports no catalog): the catalog database is down, restarting or failing over; the message
    names it (host and database, never a password) and ``Retry-After`` says when to ask again.
    One log line, no traceback: the server recovers by itself when the database is back."""
    retry_after = int(getattr(error, "retry_after", 5))
    log.warning("503: %s", error)
    return error_response(503, "catalog_unavailable", f"{error}; retry in {retry_after} s",
                          {"Retry-After": str(retry_after)})


def register_error_handlers(app: Flask) -> None:
    """JSON for every error: :class:`ApiError`, HTTP errors (404, 405, 413 ...), a catalog id
    that is not there (404), an image the readers refuse (400 / 413) and anything else (500)."""
    from chextriev.errors import ImageReadError, ImageTooLargeError

    app.json = StrictJSONProvider(app)

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = too_large_message() if status == 413 else (error.description or error.name)
        headers = {name: value for name, value in error.get_headers()  # e.g. Allow for a 405
                   if name.lower() not in ("content-type", "content-length")}
        return error_response(status, code, message, headers)

    @app.errorhandler(LookupError)
    def _unknown(error: LookupError):
        # indexer.catalog.UnknownImageError (a LookupError; matched by name so that building the
        # app does not import the catalog and Faiss): an id gone between two catalog reads
        if type(error).__name__ != "UnknownImageError":
            return _unexpected(error)
        return error_response(404, "unknown_image", str(error))

    @app.errorhandler(ImageReadError)
    def _unreadable(error: ImageReadError):  # the routes decode uploads in validation.py
        if isinstance(error, ImageTooLargeError):
            return error_response(413, "image_too_large", error.reason)
        return error_response(400, "bad_image", f"not a readable image: {error.reason}")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        if type(error).__name__ == "CatalogUnavailableError":
            return catalog_unavailable(error)
        log.exception("unexpected %s", type(error).__name__)
        return error_response(500, "internal_error", f"internal error ({type(error).__name__}); see the server log")
