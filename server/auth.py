"""Bearer-token check for every ``/api`` route (when ``AUTH_TOKEN`` is set)."""

from __future__ import annotations

import hmac

from flask import current_app, request

from server.errors import ApiError


def require_token() -> None:
    """``before_request`` hook: 401 unless ``Authorization: Bearer <AUTH_TOKEN>`` matches.

    Compared in constant time. Does nothing when no token is configured (loopback only;
    :func:`server.config.check_bind_safety` refuses other addresses without one).
    """
    token = current_app.config.get("AUTH_TOKEN")
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": 'Bearer realm="chextriev"'})
