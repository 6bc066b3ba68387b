"""Connecting to a catalog: the SQLAlchemy engine (URL normalised, SQLite pragmas, the schema
revision created or checked through :mod:`indexer.migrations`) and its sessions.

The layers: :mod:`indexer.db` (the tables) <- :mod:`indexer.migrations` (revisions) <- this
module; the SQL itself lives in :mod:`indexer.db_read` and :mod:`indexer.db_write`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker

from chextriev.errors import ChextrievError
from indexer import migrations
from indexer.db import CatalogSchemaError, default_db_url, normalise_url, safe_url, sqlite_path


def make_engine(db_url: str, *, create: bool = True, check: bool = True,
                schema: bool = True) -> Engine:
    """An engine for ``db_url``.

    With ``create`` a catalog with no tables is created and stamped with the current schema
    revision. With ``check`` (the default) a catalog at another revision raises
    :class:`~indexer.db.CatalogSchemaError` naming ``chextriev db upgrade``. ``schema=False``:
    neither (the caller runs :func:`indexer.migrations.ensure_current` itself, e.g. after
    taking the writer lock). SQLite gets WAL, ``synchronous=NORMAL``, foreign keys and a busy
    timeout.
    """
    path = sqlite_path(db_url)
    if path is not None:
        if not create and not path.is_file():
            raise CatalogSchemaError(f"no catalog database at {db_url} (run `chextriev index`)")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(normalise_url(db_url), future=True)
    except ArgumentError as error:
        raise ChextrievError(f"not a database URL: {safe_url(db_url)} ({error})") from error
    except ModuleNotFoundError as error:  # pragma: no cover - a driver the user named
        raise ChextrievError(f"the database driver for {safe_url(db_url)} is not installed: "
                             f"{error.name} (postgresql:// uses psycopg, installed by default)"
                             ) from error
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.close()

    try:
        if schema and (create or check):
            migrations.ensure_current(engine, db_url, create=create, check=check)
    except OperationalError as error:
        engine.dispose()
        raise ChextrievError(f"cannot open the catalog database {safe_url(db_url)}: "
                             f"{error.orig}") from error
    except BaseException:
        engine.dispose()
        raise
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


def open_sessions(db_url: str | None, index_dir: str | Path, *, create: bool = False
                  ) -> sessionmaker:
    """Sessions on the catalog of ``index_dir`` (``db_url``, default its SQLite file)."""
    return make_sessionmaker(make_engine(db_url or default_db_url(index_dir), create=create))
