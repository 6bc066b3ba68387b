"""Schema revisions of the catalog (Alembic, run programmatically: there is no alembic.ini).

* :func:`ensure_current` (called by :func:`indexer.db.make_engine`): a database without tables
  is created from the ORM models and stamped with :data:`HEAD`; a catalog at another revision
  raises :class:`~indexer.db.CatalogSchemaError` naming ``chextriev db upgrade``.
* :func:`upgrade` (``chextriev db upgrade``): brings a catalog to :data:`HEAD` in place, rows
  kept. A catalog made before Alembic (tables, no ``alembic_version``) counts as ``0001``.

Revisions live in ``versions/``: ``0001`` the schema of chextriev 0.1, ``0002`` the bulk vectors
moved into the vector store beside the index.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import column, inspect, select, table
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
HEAD = "0002"
LEGACY = "0001"  # what a catalog without alembic_version is


def _config(connection, index_dir: str | Path | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    config.attributes["index_dir"] = None if index_dir is None else str(index_dir)
    return config


def revisions() -> list[str]:
    """Every known revision, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(HERE))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


#: Alembic's version table (read here without importing Alembic: a reader opening a catalog
#: pays for neither Alembic's nor Mako's import, about 0.7 s of a worker's start).
VERSION_TABLE = table("alembic_version", column("version_num"))


def current_revision(connection) -> str | None:
    """The catalog's revision: its ``alembic_version`` row, :data:`LEGACY` for a pre-Alembic
    catalog, None for a database without a catalog."""
    tables = inspect(connection).get_table_names()
    revisions_found = (connection.execute(select(VERSION_TABLE.c.version_num)).scalars().all()
                       if "alembic_version" in tables else [])
    if len(revisions_found) > 1:
        from indexer.db import CatalogSchemaError

        raise CatalogSchemaError(f"the catalog records several schema revisions "
                                 f"{revisions_found} (one is expected): it was not made by "
                                 "chextriev's own migrations")
    if revisions_found:
        return revisions_found[0]
    return LEGACY if "images" in tables else None


def ensure_current(engine: Engine, db_url: str, *, create: bool = True, check: bool = True) -> None:
    """Create + stamp a new catalog, or check that an existing one is at :data:`HEAD`."""
    from indexer.db import Base, CatalogSchemaError, safe_url

    with engine.connect() as connection:
        revision = current_revision(connection)
    if revision is None:
        if not create:
            raise CatalogSchemaError(f"no catalog in {safe_url(db_url)} (run `chextriev index`)")
        from alembic import command

        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            command.stamp(_config(connection), HEAD)
        log.info("created a new catalog in %s (schema revision %s)", safe_url(db_url), HEAD)
        return
    if revision == HEAD or not check:
        return
    known = revisions()
    if revision in known:
        raise CatalogSchemaError(
            f"the catalog in {safe_url(db_url)} is at schema revision {revision}, this chextriev "
            f"uses {HEAD}: upgrade it in place with `chextriev db upgrade --db {safe_url(db_url)} "
            "--index-dir DIR` (rows are kept)")
    raise CatalogSchemaError(
        f"the catalog in {safe_url(db_url)} is at schema revision {revision}, which this "
        f"chextriev does not know (it knows {', '.join(known)}): it was made by a newer "
        "chextriev; upgrade chextriev")


def upgrade(engine: Engine, *, index_dir: str | Path | None = None, to: str = "head") -> tuple[
        str | None, str]:
    """Upgrade the catalog behind ``engine`` in place; returns ``(from, to)`` revisions.

    ``index_dir`` is needed by revisions that move data into files beside the index.
    """
    from alembic import command

    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # SQLite alters tables by copying them; foreign keys would refuse the drop of the old
            # copy (the pragma only takes effect outside a transaction).
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        with connection.begin():
            before = current_revision(connection)
            # A legacy catalog has no alembic_version: 0001 then adds only what it lacks.
            command.upgrade(_config(connection, index_dir), to)
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
    with engine.connect() as connection:
        after = current_revision(connection)
    return before, after
