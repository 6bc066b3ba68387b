"""Bearer-token check for every ``/api`` route, and the loopback rule for a server without one.

With ``AUTH_TOKEN`` set, every ``/api`` request needs ``Authorization: Bearer <token>``
(compared in constant time). Without a token the server is for this machine only: the bind
rule (:func:`server.config.check_bind_safety`) refuses a public address at start-up, and
here, whatever WSGI server runs the app, a request from a non-loopback client is refused (403),
so even a server bound by hand to a public address serves nothing to other machines.

The request's token identity for the audit log (:mod:`server.audit`) is ``g.token_id``: the
first 12 hex characters of the SHA-256 of the accepted token (never the token itself), or
``None`` (no token configured, or none accepted).
"""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from server.config import is_loopback
from server.errors import ApiError


def token_identity(token: str) -> str:
    """A short, one-way name for a token: the first 12 hex characters of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def require_token() -> None:
    """``before_request`` hook: 401 unless ``Authorization: Bearer <AUTH_TOKEN>`` matches;
    without a token configured, 403 for a client that is not on this machine."""
    g.token_id = None
    token = current_app.config.get("AUTH_TOKEN")
    if not token:
        client = request.remote_addr
        if client and not is_loopback(client):
            raise ApiError(403, "loopback_only",
                           "this server has no bearer token, so it answers this machine only: "
                           "start it with a token (token_file) to serve other machines")
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": 'Bearer realm="chextriev"'})
    g.token_id = token_identity(token)
