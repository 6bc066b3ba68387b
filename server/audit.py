"""The audit log: one JSON line per API request (``/api/...``), written after the response.

Each line holds::

    {"time": "2026-12-02T17:04:05.123Z", "method": "POST",
     "route": "/api/v1/search/by-id/<int:image_id>", "status": 200, "query_id": 12,
     "result_ids": [40, 7, 93], "token": "3f9c1a0b2d4e", "client": "127.0.0.1",
     "duration_ms": 61.2, "worker": 4711}

``route`` is the matched route pattern (``null`` for a path that matches none: the raw path is
never written, it is the client's text); ``query_id`` and ``result_ids`` are catalog ids
(integers); ``token`` is the short SHA-256 identity of the accepted bearer token
(:func:`server.auth.token_identity`, never the token; ``null`` without one). Nothing else from
the request is written: no patient identifier, no file name, no form field, no uploaded byte.

With ``audit_log`` set (``--audit-log FILE``, ``CHEXTRIEV_AUDIT_LOG``) the lines go to that file,
rotated by size (``audit_log_max_mb``, ``audit_log_backups``: ``FILE.1`` is the newest old one).
Several gunicorn workers append to the same file safely: each line is written under an
exclusive ``flock`` on ``FILE.lock``, by one ``write`` on a descriptor opened in append mode, and
the size check and rotation happen under the same lock, so no line is lost, doubled or split.
Without a file the lines go to the ``server.audit`` logger (the server's log).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request

log = logging.getLogger(__name__)
EXTENSION = "chextriev_audit"


class AuditFile:
    """A size-rotated file that several processes append JSON lines to (module docstring)."""

    def __init__(self, path: str | Path, max_bytes: int, backups: int):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, line: str) -> None:
        data = (line.rstrip("\n") + "\n").encode()
        with self._thread_lock:
            lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(data) > self.max_bytes:
                    self._rotate()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            finally:
                os.close(lock)  # releases the flock

    def _rotate(self) -> None:
        """``FILE.{n-1}`` -> ``FILE.{n}`` ... ``FILE`` -> ``FILE.1`` (the oldest dropped)."""
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


class AuditLog:
    """Where an app's audit lines go: an :class:`AuditFile`, or the ``server.audit`` logger."""

    def __init__(self, file: AuditFile | None = None):
        self.file = file
        self.logger = logging.getLogger("server.audit")

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), allow_nan=False)
        if self.file is None:
            self.logger.info("%s", line)
            return
        try:
            self.file.write(line)
        except OSError as error:  # a full disk must not fail the request already answered
            log.error("audit log %s not written: %s", self.file.path, error.strerror)


def record_ids(*, query_id: int | None = None, result_ids: list[int] | None = None) -> None:
    """Name the catalog ids this request answered with (the audit line carries them)."""
    if query_id is not None:
        g.audit_query_id = int(query_id)
    if result_ids is not None:
        g.audit_result_ids = [int(i) for i in result_ids]


def init_audit(app: Flask) -> AuditLog:
    """Attach the audit log to ``app`` (settings ``AUDIT_LOG``, ``AUDIT_LOG_MAX_MB``,
    ``AUDIT_LOG_BACKUPS``)."""
    path = app.config.get("AUDIT_LOG")
    file = AuditFile(path, int(app.config.get("AUDIT_LOG_MAX_MB") or 10) * 1024 * 1024,
                     int(app.config.get("AUDIT_LOG_BACKUPS") or 5)) if path else None
    audit = AuditLog(file)
    app.extensions[EXTENSION] = audit
    app.before_request(_start)
    app.after_request(_finish)
    return audit


def _start() -> None:
    g.audit_started = time.perf_counter()


def _finish(response: Response) -> Response:
    if not request.path.startswith("/api/"):
        return response
    started = g.get("audit_started")
    rule = request.url_rule
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": request.method,
        "route": rule.rule if rule is not None else None,
        "status": response.status_code,
        "query_id": g.get("audit_query_id"),
        "result_ids": g.get("audit_result_ids", []),
        "token": g.get("token_id"),
        "client": request.remote_addr,
        "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 1),
        "worker": os.getpid(),
    }
    current_app.extensions[EXTENSION].write(entry)
    return response
