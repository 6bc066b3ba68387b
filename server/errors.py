"""JSON errors: one exception type for the API and the handlers that render every error as
``{"error": {"code": ..., "message": ...}}`` with the right status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as JSON: ``status`` (HTTP), ``code`` (stable, machine-readable) and a
    message a user can act on."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = {
            413: "payload_too_large",
            404: "not_found",
            405: "method_not_allowed",
            400: "bad_request",
        }.get(error.code or 500, "http_error")
        message = error.description or error.name
        if error.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"upload larger than the limit of {limit} bytes (MAX_CONTENT_LENGTH)"
        return error_response(error.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unexpected %s", type(error).__name__)
        return error_response(500, "internal_error", f"internal error ({type(error).__name__}); see the server log")
