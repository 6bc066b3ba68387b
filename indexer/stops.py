"""Why an indexing command stopped early, said in one line: the catalog database went away (down,
restarting, failing over) or the disk filled up. Neither loses anything committed: a writer
batch is one transaction whose vector-store and preview files are fsynced before it commits,
and the index is derived state that the next run brings up to date, so the message says what
this run committed and to rerun the same command once the cause is gone
(``tests/indexer/test_indexer_outage.py``).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from chextriev.errors import ChextrievError
from indexer.db import CatalogUnavailableError, default_db_url, sqlite_path
from indexer.engine import describe_database, unavailable

#: errno values that mean "the file system is full" (quota included).
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: How a full disk reads in the messages of SQLite, Faiss (C++ ``fwrite`` checks) and PostgreSQL.
_FULL_TEXT = ("database or disk is full", "no space left on device", "could not extend file")


class DiskFullError(ChextrievError):
    """The file system holding the index (or the catalog) is full; the message names the folder,
    what the run committed, and what to do."""


def _full_path(error: BaseException) -> tuple[bool, str | None]:
    """``(is a full disk, the file being written when known)`` of ``error`` or its causes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True, error.filename
        orig = getattr(error, "orig", None)  # SQLAlchemy's wrapper of the driver's error
        text = f"{error} {orig or ''}".lower()
        if any(part in text for part in _FULL_TEXT):
            return True, None
        error = error.__cause__ or error.__context__
    return False, None


def _folder(path: str | None, index_dir: Path, db_url: str) -> Path:
    """The folder to name: the index folder when the file is in it (or unknown), else the
    file's own folder (a catalog file or shard folder elsewhere)."""
    index_dir = Path(index_dir).resolve()
    if path:
        file = Path(path).resolve()
        return index_dir if file.is_relative_to(index_dir) else file.parent
    database = sqlite_path(db_url)
    return index_dir if database is None else database.resolve().parent


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free now"
    except OSError:  # pragma: no cover - the folder went away too
        return "free space unknown"


def stop_error(error: BaseException, *, index_dir, db_url: str | None, committed: int | None
               ) -> ChextrievError | None:
    """``error`` as the one-line error a command stops with, or None when it is neither a full
    disk nor an unreachable catalog database (then it stays what it is). ``committed``: the new
    images this run committed before stopping (None: a command that adds none)."""
    db_url = db_url or default_db_url(index_dir)
    done = ("" if committed is None else
            f"this run committed {committed} new image(s) before stopping, and nothing "
            "committed is lost; ")
    full, path = _full_path(error)
    if full:
        orig = getattr(error, "orig", None)
        if orig is not None and "could not extend file" in str(orig).lower():  # PostgreSQL's
            where = f"the disk of the catalog database ({describe_database(db_url)})"
        else:
            folder = _folder(path, index_dir, db_url)
            where = f"the file system holding {folder} ({_free(folder)})"
        return DiskFullError(
            f"no space left on {where}: {done}free space there (or move the index to a larger "
            "disk) and rerun the same command: it carries on where this one stopped")
    problem = error if isinstance(error, CatalogUnavailableError) else unavailable(error, db_url)
    if problem is None:
        return None
    return CatalogUnavailableError(
        f"{problem}; {done}rerun the same command when the database is back: it carries on "
        "where this one stopped", retry_after=problem.retry_after)

