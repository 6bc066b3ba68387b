"""Every statement the write side runs against the catalog (the writer, the index syncer,
``index remove``, the ledger reads of a run, the distributed merge, the writer lock), so that no
other module of the write side holds SQL.

Batched by design: a writer batch costs the same number of statements at 10 rows as at 400
(bulk ``IN`` lookups, multi-row ``INSERT ... RETURNING``, ``executemany`` updates). Functions
take an open session (or, for the lock, a connection) and never commit: the caller owns the
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, inspect, select, update
from sqlalchemy.orm import Session

from chextriev.errors import ChextrievError
from indexer.db import (
    STATUS_FAILED,
    STATUS_INDEXED,
    STATUS_REMOVED,
    CatalogState,
    Image,
    IndexBuild,
    Patient,
    Source,
    WriterLock,
    catalog_state,
    utcnow,
)


# ---------------------------------------------------------------------- catalog state
def lock_state(session: Session, committed: int) -> CatalogState:
    """The ``catalog_state`` row, locked for this transaction (PostgreSQL ``FOR UPDATE``);
    raises when its committed store length is not the writer's ``committed`` (another writer)."""
    state = catalog_state(session, for_update=True)
    if state.store_rows != committed:
        raise RuntimeError(f"vector store at {committed} rows, catalog says {state.store_rows}: "
                           "another writer?")
    return state


def bump_generation(session: Session, *, removals: int = 0, store_rows: int | None = None) -> None:
    """Record in this transaction that the indexed set changed (and how)."""
    state = catalog_state(session, for_update=True)
    values = {"generation": CatalogState.generation + 1, "updated": utcnow(),
              "removals": CatalogState.removals + int(removals)}
    if store_rows is not None:
        values["store_rows"] = int(store_rows)
    session.execute(update(CatalogState).where(CatalogState.id == state.id).values(**values))


# ---------------------------------------------------------------------- one writer batch
def batch_lookups(session: Session, keys: Iterable[str], hashes: Iterable[str],
                  uids: Iterable[str]) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
    """``(image pk by content hash, image pk by SOP Instance UID, ledger row by key)`` for one
    batch: three bulk ``IN`` queries (a ledger row has ``id``, ``path``, ``content_hash``,
    ``image_pk``)."""
    hashes, uids, keys = list(hashes), list(uids), list(set(keys))
    by_hash = dict(session.execute(select(Image.content_hash, Image.id).where(
        Image.content_hash.in_(hashes))).all()) if hashes else {}
    by_uid = dict(session.execute(select(Image.sop_instance_uid, Image.id).where(
        Image.sop_instance_uid.in_(uids))).all()) if uids else {}
    ledger = {row.path: row for row in session.execute(
        select(Source.id, Source.path, Source.content_hash, Source.image_pk)
        .where(Source.path.in_(keys)))} if keys else {}
    return by_hash, by_uid, ledger


def ensure_keyed(session: Session, model, wanted: dict[str, dict]) -> dict[str, int]:
    """``{key: pk}`` of every key of ``wanted`` in ``model``'s table (patients, studies),
    inserting the missing rows in one multi-row INSERT ... RETURNING (``wanted[key]`` holds the
    other column values)."""
    if not wanted:
        return {}
    found = dict(session.execute(select(model.key, model.id).where(
        model.key.in_(list(wanted)))).all())
    missing = [{"key": k, **v, "created": utcnow()} for k, v in wanted.items() if k not in found]
    if missing:
        rows = session.execute(insert(model).returning(model.key, model.id,
                                                       sort_by_parameter_order=True), missing)
        found.update(dict(rows.all()))
    return found


def insert_images(session: Session, rows: list[dict]) -> list[int]:
    """Insert image rows (Core: one multi-row INSERT ... RETURNING per page); their new ids."""
    if not rows:
        return []
    result = session.connection().execute(insert(Image.__table__).returning(
        Image.__table__.c.id, sort_by_parameter_order=True), rows)
    return [r[0] for r in result.all()]


def write_ledger(session: Session, added: list[dict], changed: list[dict]) -> None:
    """Insert new ledger rows and update changed ones (``changed`` rows carry their ``id``)."""
    if added:
        session.connection().execute(insert(Source.__table__), added)
    if changed:
        session.execute(update(Source), changed)


def drop_orphans(session: Session, previous: set[int]) -> tuple[int, int]:
    """Delete the images among ``previous`` that no ledger row points at any more (a changed
    file's old content); returns ``(deleted, of which indexed)``."""
    if not previous:
        return 0, 0
    held = set(session.scalars(select(Source.image_pk).where(
        Source.image_pk.in_(sorted(previous))).distinct()))
    orphans = sorted(previous - held)
    if not orphans:
        return 0, 0
    indexed = int(session.scalar(select(func.count(Image.id)).where(
        Image.id.in_(orphans), Image.status == STATUS_INDEXED)))
    session.execute(delete(Image).where(Image.id.in_(orphans)))
    return len(orphans), indexed


# ---------------------------------------------------------------------- a run's ledger
def foreign_checkpoints(session: Session, checkpoint_id: str | None) -> set[str]:
    """Checkpoint ids other than ``checkpoint_id`` that indexed images were embedded with."""
    return set(session.scalars(select(Image.checkpoint_id).where(
        Image.status == STATUS_INDEXED, Image.checkpoint_id != checkpoint_id).distinct()))


def indexed_checkpoints(session: Session) -> list[str]:
    """The checkpoint ids of the indexed images, sorted (one, in a consistent catalog)."""
    return sorted(c for c in session.scalars(select(Image.checkpoint_id).where(
        Image.status == STATUS_INDEXED).distinct()) if c)


def count_indexed(session: Session) -> int:
    return int(session.scalar(select(func.count(Image.id)).where(Image.status == STATUS_INDEXED)))


def ledger_rows(session: Session) -> Iterator[tuple[str, int, int, str | None, bool]]:
    """``(key, size, mtime_ns, content hash, failed)`` of every ledger row (``failed``: the
    image it points at has status ``failed``)."""
    rows = session.execute(
        select(Source.path, Source.file_size, Source.mtime_ns, Source.content_hash, Image.status)
        .outerjoin(Image, Image.id == Source.image_pk))
    for key, size, mtime, content_hash, status in rows:
        yield key, size, mtime, content_hash, status == STATUS_FAILED


def ledger_versions(session: Session, keys: Iterable[str]) -> dict[str, tuple]:
    """``{key: (size, mtime_ns, content hash)}`` of the ledger rows of ``keys`` (one query)."""
    rows = session.execute(select(Source.path, Source.file_size, Source.mtime_ns,
                                  Source.content_hash).where(Source.path.in_(list(set(keys)))))
    return {path: (size, mtime, content) for path, size, mtime, content in rows}


# ---------------------------------------------------------------------- pseudonymised ledger
def clear_ledger_count(session: Session, prefix: str) -> int:
    """Ledger rows whose key is not a keyed hash (does not start with ``prefix``)."""
    return int(session.scalar(select(func.count(Source.id)).where(
        Source.path.notlike(prefix + "%"))))


def pseudonymised_rows(session: Session, prefix: str) -> bool:
    """Whether the catalog holds a pseudonymised patient or a hashed ledger key."""
    return session.scalar(select(Patient.id).where(Patient.pseudonymised.is_(True)).limit(1)) \
        is not None or session.scalar(select(Source.id).where(
            Source.path.like(prefix + "%")).limit(1)) is not None


def clear_ledger_sample(session: Session, prefix: str, n: int) -> list[tuple]:
    """``(key, image id, SOP instance UID)`` of up to ``n`` clear ledger rows with an image."""
    return list(session.execute(
        select(Source.path, Image.image_id, Image.sop_instance_uid)
        .join(Image, Image.id == Source.image_pk).where(Source.path.notlike(prefix + "%"))
        .order_by(Source.id).limit(n)).all())


def clear_ledger_rows(session: Session, prefix: str) -> tuple[list[tuple], list[tuple]]:
    """``([(id, key)] of clear ledger rows, [(id, source path, image id)] of image rows whose
    source path is clear)``."""
    sources = session.execute(select(Source.id, Source.path).where(
        Source.path.notlike(prefix + "%"))).all()
    images = session.execute(select(Image.id, Image.source_path, Image.image_id).where(
        Image.source_path.notlike(prefix + "%"))).all()
    return [tuple(r) for r in sources], [tuple(r) for r in images]


def rewrite_ledger(session: Session, sources: list[dict], images: list[dict]) -> None:
    """Set ledger keys (``{"id", "path"}``) and image rows (``{"id", "source_path",
    "image_id"}``) by primary key (``executemany``)."""
    if sources:
        session.execute(update(Source), sources)
    if images:
        session.execute(update(Image), images)


def compact(engine, tables: Iterable[str]) -> None:
    """Rewrite the database files so that values changed or deleted are gone from them:
    SQLite ``VACUUM`` and a truncating WAL checkpoint; PostgreSQL ``VACUUM FULL`` of
    ``tables`` (new table files; the old ones are unlinked)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.exec_driver_sql("VACUUM")
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif engine.dialect.name == "postgresql":
            names = [t for t in tables if inspect(connection).has_table(t)]
            connection.exec_driver_sql("VACUUM FULL " + ", ".join(names))


# ---------------------------------------------------------------------- the index syncer
def indexed_slots(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, slots)`` of every ``indexed`` row with a stored vector, sorted by id."""
    rows = session.execute(select(Image.id, Image.vector_slot).where(
        Image.status == STATUS_INDEXED).order_by(Image.id)).all()
    missing = [pk for pk, slot in rows if slot is None]
    if missing:
        raise ChextrievError(f"{len(missing)} image(s) marked indexed have no stored embedding "
                             f"(first: {missing[:5]}); run `chextriev index repair`")
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    slots = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    return ids, slots


def indexed_since(session: Session, slot: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, slots)`` of the ``indexed`` rows stored at vector slot ``slot`` or later, in slot
    order (what a checkpoint adds)."""
    rows = session.execute(select(Image.id, Image.vector_slot).where(
        Image.status == STATUS_INDEXED, Image.vector_slot >= int(slot))
        .order_by(Image.vector_slot)).all()
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64)


def record_build(session: Session, **fields: Any) -> None:
    """An ``index_builds`` row (checkpoint id, dimension, type, factory, vectors, state, id)."""
    session.add(IndexBuild(**fields))


def resolve_images(session: Session, refs: Iterable[int | str]) -> tuple[set[int], list[str]]:
    """``(ids, unknown)``: database ids of ``refs`` (database ids, or dataset image ids as
    strings) and the references that name no image."""
    found: set[int] = set()
    unknown = []
    for item in refs:
        text = str(item)
        if text.isdigit() and session.get(Image, int(text)) is not None:
            found.add(int(text))
            continue
        pks = session.scalars(select(Image.id).where(Image.image_id == text)).all()
        if pks:
            found.update(pks)
        else:
            unknown.append(text)
    return found, unknown


def mark_removed(session: Session, ids: Iterable[int], reason: str) -> int:
    """Mark the indexed images among ``ids`` removed (and move the generation); how many."""
    result = session.execute(
        update(Image).where(Image.id.in_(sorted(ids)), Image.status == STATUS_INDEXED)
        .values(status=STATUS_REMOVED, reason=reason))
    removed = int(result.rowcount)
    if removed:
        bump_generation(session, removals=removed)
    return removed


# ---------------------------------------------------------------------- the writer lock
def try_advisory_lock(connection, key: int) -> bool:
    """PostgreSQL ``pg_try_advisory_lock(key)`` on ``connection`` (held until it closes)."""
    return bool(connection.execute(select(func.pg_try_advisory_lock(key))).scalar())


def advisory_unlock(connection, key: int) -> None:
    connection.execute(select(func.pg_advisory_unlock(key)))


def _has_lock_table(connection) -> bool:
    return inspect(connection).has_table(WriterLock.__tablename__)


def read_lock_holder(connection) -> dict | None:
    """Who ``writer_lock`` says holds the writer lock (None: nobody recorded, or no table)."""
    if not _has_lock_table(connection):
        return None
    row = connection.execute(select(WriterLock.pid, WriterLock.host, WriterLock.started,
                                    WriterLock.command).where(WriterLock.id == 1)).first()
    if row is None or row[0] is None:
        return None
    return {"pid": row[0], "host": row[1], "started": str(row[2]), "command": row[3]}


def write_lock_holder(connection, *, pid: int, host: str, started: datetime,
                      command: str) -> None:
    """Record the holder in ``writer_lock`` (once the table exists: a new catalog gets its
    tables after the lock is taken)."""
    if not _has_lock_table(connection):
        return
    connection.execute(delete(WriterLock).where(WriterLock.id == 1))
    connection.execute(insert(WriterLock).values(id=1, pid=pid, host=host, started=started,
                                                 command=command))


def clear_lock_holder(connection) -> None:
    if _has_lock_table(connection):
        connection.execute(delete(WriterLock).where(WriterLock.id == 1))
