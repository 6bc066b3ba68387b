"""Connecting to a catalog: the SQLAlchemy engine (URL normalised, SQLite pragmas, the schema
revision created or checked through :mod:`indexer.migrations`) and its sessions.

The layers: :mod:`indexer.db` (the tables) <- :mod:`indexer.migrations` (revisions) <- this
module; the SQL itself lives in :mod:`indexer.db_read` and :mod:`indexer.db_write`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker

from chextriev.errors import ChextrievError
from indexer import migrations
from indexer.db import (
    CatalogSchemaError,
    CatalogUnavailableError,
    default_db_url,
    normalise_url,
    safe_url,
    sqlite_path,
)

#: Seconds a PostgreSQL connection attempt may take (unless the URL sets ``connect_timeout``):
#: a database host that drops packets during a failover answers "unavailable" after this,
#: instead of holding a request or a run for the kernel's TCP timeout.
CONNECT_TIMEOUT_S = 5
#: Seconds a client is told to wait (``Retry-After``) while the catalog database is unreachable.
RETRY_AFTER_S = 5
#: SQLite errors that say the database cannot be used now (not that a statement is wrong).
_SQLITE_UNAVAILABLE = ("unable to open database file", "disk i/o error", "database is locked")


def make_engine(db_url: str, *, create: bool = True, check: bool = True,
                schema: bool = True, pre_ping: bool = True) -> Engine:
    """An engine for ``db_url``.

    With ``create`` a catalog with no tables is created and stamped with the current schema
    revision. With ``check`` (the default) a catalog at another revision raises
    :class:`~indexer.db.CatalogSchemaError` naming ``chextriev db upgrade``. ``schema=False``:
    neither (the caller runs :func:`indexer.migrations.ensure_current` itself, e.g. after
    taking the writer lock). SQLite gets WAL, ``synchronous=NORMAL``, foreign keys and a busy
    timeout. ``pre_ping`` (readers): a pooled connection is tested before use and made again
    when the database dropped it (a restart, a failover), so the first request after one does
    not fail; writers pass False: a run stops at the first dead connection (its advisory lock
    died with it) and resumes on the next run. A database that cannot be reached raises
    :class:`~indexer.db.CatalogUnavailableError`.
    """
    path = sqlite_path(db_url)
    if path is not None:
        if not create and not path.is_file():
            raise CatalogSchemaError(f"no catalog database at {db_url} (run `chextriev index`)")
        path.parent.mkdir(parents=True, exist_ok=True)
    options: dict = {"pool_pre_ping": pre_ping}
    url = normalise_url(db_url)
    if url.startswith("postgresql") and "connect_timeout" not in make_url(url).query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(url, future=True, **options)
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
        problem = unavailable(error, db_url)
        if problem is not None:
            raise problem from None
        raise ChextrievError(f"cannot open the catalog database {safe_url(db_url)}: "
                             f"{first_line(error.orig)}") from error
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


def describe_database(db_url: str) -> str:
    """The catalog database in words, never with a password: ``PostgreSQL database "db" on
    host:port``, ``SQLite file PATH``."""
    try:
        url = make_url(normalise_url(db_url))
    except ArgumentError:
        return "<unparseable database URL>"
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database or ':memory:'}"
    where = f"{url.host or 'localhost'}" + (f":{url.port}" if url.port else "")
    return f'{url.get_backend_name()} database "{url.database}" on {where}'


def first_line(error: BaseException | None) -> str:
    """The first line of a driver's message (psycopg's carry hints on further lines)."""
    text = str(error or "").strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def unavailable(error: BaseException, db_url: str) -> CatalogUnavailableError | None:
    """``error`` as :class:`~indexer.db.CatalogUnavailableError` when it says the catalog
    database cannot be used now (PostgreSQL down, restarting, failing over, a connection it
    dropped; SQLite's file unopenable or locked past the busy timeout), else None (a statement
    that is wrong stays the error it is)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError

    if not isinstance(error, DBAPIError):
        return None
    if not error.connection_invalidated:
        if make_url(normalise_url(db_url)).get_backend_name() == "sqlite":
            if not isinstance(error, OperationalError) or not any(
                    text in str(error.orig).lower() for text in _SQLITE_UNAVAILABLE):
                return None
        elif not isinstance(error, (OperationalError, InterfaceError)):
            return None
    reason = first_line(error.orig)
    password = make_url(normalise_url(db_url)).password
    if password:
        reason = reason.replace(str(password), "***")
    return CatalogUnavailableError(
        f"the catalog database ({describe_database(db_url)}) is unavailable: {reason}",
        retry_after=RETRY_AFTER_S)
