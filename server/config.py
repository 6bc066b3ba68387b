"""Server configuration: defaults, environment variables, and the bind-address safety rule.

Keys (``app.config``):

* ``CHECKPOINT`` (path), ``DB_URL`` (SQLAlchemy URL), ``INDEX_DIR`` (path), ``DETECTOR``
  (optional path): what :class:`server.services.SearchService` loads.
* ``DEVICE``: torch device for the model (default ``"cpu"``); ``TORCH_THREADS``: intra-op
  threads per worker process (default: torch's choice).
* ``PRECISION``: ``auto`` (default: bf16 where the CPU or GPU computes it natively), ``fp32``
  or ``bf16``, for the model, the detector and Grad-CAM (:mod:`chextriev.precision`).
* ``MAX_CONTENT_LENGTH``: upload limit in bytes (default 64 MiB; beyond: 413 JSON).
* ``MAX_PIXELS``: decompression-bomb guard, the most pixels an upload may decode to
  (default 64 Mpx; beyond: 413 JSON, checked from the header before decoding).
* ``AUTH_TOKEN``: bearer token required on every ``/api`` route when set.
* ``HOST``: the address the server is bound to; any non-loopback address requires
  ``AUTH_TOKEN`` (:func:`check_bind_safety`).
* ``LOAD``: ``"background"`` (default: load in a thread, ``/readyz`` says 503 until done),
  ``"sync"`` (load before ``create_app`` returns) or ``"manual"`` (the caller calls
  ``app.extensions["chextriev"].load()``, used by tests of the not-ready state).
* ``SECRET_KEY``: from ``CHEXTRIEV_SECRET_KEY`` or random per process (no fixed default).

Environment variables ``CHEXTRIEV_<KEY>`` fill any key not given explicitly, so
``flask --app server run`` works with ``CHEXTRIEV_CHECKPOINT``, ``CHEXTRIEV_DB_URL``,
``CHEXTRIEV_INDEX_DIR`` (and the optional ones) exported.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from typing import Any

from chextriev.errors import ChextrievError

DEFAULTS: dict[str, Any] = {
    "CHECKPOINT": None,
    "DB_URL": None,
    "INDEX_DIR": None,
    "DETECTOR": None,
    "DEVICE": "cpu",
    "TORCH_THREADS": None,
    "PRECISION": "auto",
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    "MAX_PIXELS": 64 * 1024 * 1024,
    "AUTH_TOKEN": None,
    "HOST": "127.0.0.1",
    "LOAD": "background",
}
INT_KEYS = ("MAX_CONTENT_LENGTH", "MAX_PIXELS")
LOAD_MODES = ("background", "sync", "manual")
ENV_PREFIX = "CHEXTRIEV_"


class ConfigError(ChextrievError):
    """A server setting that is missing or unsafe."""


def resolve_config(config: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Merge defaults < environment (``CHEXTRIEV_<KEY>``) < ``config``; validate the result."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = dict(DEFAULTS)
    for key in DEFAULTS:
        value = environ.get(ENV_PREFIX + key)
        if value not in (None, ""):
            merged[key] = value
    merged.update(config or {})
    if merged["TORCH_THREADS"] not in (None, ""):
        try:
            merged["TORCH_THREADS"] = int(merged["TORCH_THREADS"])
        except (TypeError, ValueError):
            raise ConfigError(f"TORCH_THREADS must be an integer, got {merged['TORCH_THREADS']!r}") from None
    for key in INT_KEYS:
        try:
            merged[key] = int(merged[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer number of bytes/pixels, got {merged[key]!r}") from None
        if merged[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {merged[key]}")
    from chextriev.precision import PRECISIONS

    merged["PRECISION"] = str(merged["PRECISION"]).strip().lower()
    if merged["PRECISION"] not in PRECISIONS:
        from chextriev.errors import UnknownNameError

        raise UnknownNameError("precision", merged["PRECISION"], PRECISIONS)
    if merged["LOAD"] not in LOAD_MODES:
        from chextriev.errors import UnknownNameError

        raise UnknownNameError("load mode", merged["LOAD"], LOAD_MODES)
    merged.setdefault("SECRET_KEY", environ.get(ENV_PREFIX + "SECRET_KEY") or secrets.token_hex(32))
    check_bind_safety(merged["HOST"], merged["AUTH_TOKEN"])
    return merged


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_safety(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind address without a bearer token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on {host} without a bearer token: pass --token-file FILE "
            "(or set CHEXTRIEV_AUTH_TOKEN), or bind 127.0.0.1"
        )
