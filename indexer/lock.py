"""One writer per catalog: a lock in the index folder AND in the database.

* Index folder: ``fcntl.flock`` on ``<index_dir>/writer.lock``, which holds the holder's pid,
  host, start time and command (JSON). The kernel releases a flock when its process dies, so a
  lock left by a killed run is simply free again; the stale JSON is overwritten by the next
  holder. No manual cleanup, no pid guessing.
* Database: PostgreSQL ``pg_try_advisory_lock`` on a connection held for the whole run (the
  server drops it when that connection dies), with the holder recorded in ``writer_lock``; a
  file-backed SQLite catalog gets a flock on ``<database file>.writer.lock``. So two runs with
  different ``--index-dir`` but one ``--db`` still exclude each other.

A second writer gets :class:`LockHeldError` naming the process and host holding the lock, or
waits (``wait`` seconds; ``math.inf`` = as long as it takes).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from chextriev.errors import ChextrievError
from chextriev.files import fsync_handle
from indexer import db_write

log = logging.getLogger(__name__)

LOCK_FILE = "writer.lock"
#: pg_advisory_lock key of the catalog writer (any fixed 64-bit number; "CXTRWRIT").
ADVISORY_KEY = 0x4358545257524954 - (1 << 63)
_POLL = 0.2


class LockHeldError(ChextrievError):
    """Another process holds the writer lock of this catalog."""

    def __init__(self, what: str, holder: dict | None, waited: float | None):
        self.holder = holder or {}
        who = (f"pid {self.holder.get('pid', '?')} on host {self.holder.get('host', '?')} "
               f"(started {self.holder.get('started', '?')}: {self.holder.get('command', '?')})"
               if holder else "another process")
        waited_text = f" after waiting {waited:.0f} s" if waited else ""
        super().__init__(
            f"{what} is being written by {who}{waited_text}. Only one `chextriev index` may write "
            "a catalog at a time: let it finish, or pass --wait [SECONDS] to queue behind it")


@dataclass
class Holder:
    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(),
                   datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), _command_line())


def _command_line() -> str:
    """This process's command line for the lock record, URLs with their passwords masked; of a
    pseudonymising run only the command and its option names (its paths stay out of the
    catalog's ``writer_lock`` row)."""
    from indexer.db import safe_url

    words = [os.path.basename(a) if i == 0 else (safe_url(a) if "://" in a else a)
             for i, a in enumerate(sys.argv)]
    if "--pseudonymise" in words:
        first = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        words = words[:first] + [w.split("=")[0] for w in words[first:] if w.startswith("-")]
    return " ".join(words)[:500]


def _deadline(wait: float | None) -> float:
    if wait is None or wait <= 0:
        return time.monotonic()
    return math.inf if math.isinf(wait) else time.monotonic() + float(wait)


class _FileLock:
    def __init__(self, path: Path, what: str):
        self.path = path
        self.what = what
        self.handle = None

    def acquire(self, holder: Holder, wait: float | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        started, deadline, announced = time.monotonic(), _deadline(wait), False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                current = self.read()
                if time.monotonic() >= deadline:
                    handle.close()
                    raise LockHeldError(self.what, current,
                                        time.monotonic() - started if wait else None) from None
                if not announced:
                    log.info("waiting for the writer lock of %s (held by pid %s on %s)", self.what,
                             (current or {}).get("pid"), (current or {}).get("host"))
                    announced = True
                time.sleep(_POLL)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder.__dict__))
        fsync_handle(handle)
        self.handle = handle

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.handle is not None:
            try:
                self.handle.seek(0)
                self.handle.truncate()
                self.handle.flush()
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            finally:
                self.handle.close()
                self.handle = None


class _AdvisoryLock:
    """PostgreSQL session advisory lock on a dedicated connection; the holder recorded in the
    ``writer_lock`` table (:mod:`indexer.db_write`)."""

    def __init__(self, engine, what: str):
        self.engine = engine
        self.what = what
        self.connection = None

    def _holder(self) -> dict | None:
        with self.engine.connect() as connection:
            return db_write.read_lock_holder(connection)

    def acquire(self, holder: Holder, wait: float | None) -> None:
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        started, deadline, announced = time.monotonic(), _deadline(wait), False
        while not db_write.try_advisory_lock(connection, ADVISORY_KEY):
            if time.monotonic() >= deadline:
                connection.close()
                raise LockHeldError(self.what, self._holder(),
                                    time.monotonic() - started if wait else None)
            if not announced:
                log.info("waiting for the writer lock of %s", self.what)
                announced = True
            time.sleep(_POLL)
        self.connection = connection
        self.holder = holder
        self.note()

    def note(self) -> None:
        """Record the holder in ``writer_lock`` (once the table exists: a new catalog gets its
        tables after the lock is taken)."""
        if self.connection is None:
            return
        holder = self.holder
        db_write.write_lock_holder(
            self.connection, pid=holder.pid, host=holder.host, command=holder.command,
            started=datetime.strptime(holder.started, "%Y-%m-%dT%H:%M:%SZ"))

    def release(self) -> None:
        if self.connection is not None:
            from sqlalchemy.exc import DBAPIError

            try:
                db_write.clear_lock_holder(self.connection)
                db_write.advisory_unlock(self.connection, ADVISORY_KEY)
            except DBAPIError as error:  # the database went away: the lock went with it
                log.debug("writer lock of %s released with its connection: %s", self.what,
                          str(error.orig).splitlines()[0] if error.orig else error)
            finally:
                try:
                    self.connection.close()
                except DBAPIError:  # pragma: no cover - closing a connection already gone
                    pass
                self.connection = None


class CatalogLock:
    """Hold both writer locks of a catalog (``with CatalogLock(...):``)."""

    def __init__(self, index_dir: str | Path | None, *, engine=None, db_url: str | None = None,
                 wait: float | None = None):
        from indexer.db import safe_url, sqlite_path

        self.wait = wait
        self.locks: list = []
        if index_dir is not None:
            self.locks.append(_FileLock(Path(index_dir) / LOCK_FILE,
                                        f"the index folder {index_dir}"))
        if engine is not None:
            if engine.dialect.name == "postgresql":
                self.locks.append(_AdvisoryLock(engine, f"the catalog {safe_url(db_url or '')}"))
            elif db_url and sqlite_path(db_url) is not None:
                path = sqlite_path(db_url)
                self.locks.append(_FileLock(path.with_name(path.name + ".writer.lock"),
                                            f"the catalog {path}"))
        self.held: list = []

    def acquire(self) -> Self:
        holder = Holder.me()
        try:
            for lock in self.locks:
                lock.acquire(holder, self.wait)
                self.held.append(lock)
        except BaseException:
            self.release()
            raise
        return self

    def note_holder(self) -> None:
        """Record the holder where the lock lives in a table (after the schema exists)."""
        for lock in self.held:
            if isinstance(lock, _AdvisoryLock):
                lock.note()

    def release(self) -> None:
        while self.held:
            self.held.pop().release()

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(index_dir: str | Path) -> dict | None:
    """Who holds (or last held) the index folder's writer lock, for messages and status."""
    return _FileLock(Path(index_dir) / LOCK_FILE, str(index_dir)).read()
