"""The catalog database: SQLAlchemy 2.0 ORM models, portable across SQLite and PostgreSQL.

Tables
------
``patients``       one row per (optionally pseudonymised) patient identifier.
``studies``        one row per study (StudyInstanceUID or the manifest's study id).
``images``         one row per distinct image content (unique ``content_hash``; unique
                   ``sop_instance_uid`` when DICOM; the study, series and SOP instance UIDs
                   stored as keyed HMACs when the run pseudonymises): metadata, predictions, boxes, status
                   (``indexed`` / ``skipped`` / ``failed`` / ``removed``), a compact JPEG
                   thumbnail, and ``vector_slot``: the row of its exact embedding and region
                   embeddings in the vector store beside the index (:mod:`indexer.vector_store`).
                   The bulk vectors are not in SQL rows.
``sources``        the ledger of discovered records (``path`` holds the record key: an absolute
                   path, or a ``dicomweb:`` key) pointing at the image row holding their content.
``index_builds``   one row per saved Faiss index build.
``catalog_state``  one row: ``generation`` (bumped by every transaction that changes the indexed
                   set), ``store_rows`` (the vector store's committed length: the commit point of
                   the vector files), ``removals`` (bumped whenever an image leaves the indexed
                   set). The index manifest records the values it reflects, so a checkpoint only
                   looks at what changed.
``writer_lock``    who holds the one-writer lock (informational: the lock itself is a
                   PostgreSQL advisory lock or a file lock, see :mod:`indexer.lock`).

The schema is versioned with Alembic (``indexer/migrations``); :func:`indexer.engine.make_engine`
creates and stamps a new catalog, and refuses one whose revision differs from the code's, naming
``chextriev db upgrade``. Only portable SQL types are used; SQLite gets WAL mode and a busy
timeout through a connect hook. ``postgresql://`` URLs use psycopg 3 (installed by default).

The layers: this module (tables, URLs, the one ``catalog_state`` row) <- :mod:`indexer.migrations`
<- :mod:`indexer.engine`; the queries are :mod:`indexer.db_read`'s (the read side) and
:mod:`indexer.db_write`'s (the writer, the syncer, the lock).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chextriev.errors import ChextrievError

STATUS_INDEXED = "indexed"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
STATUS_REMOVED = "removed"
STATUSES = (STATUS_INDEXED, STATUS_SKIPPED, STATUS_FAILED, STATUS_REMOVED)

PSEUDONYM_KEY_ENV = "CHEXTRIEV_PSEUDONYM_KEY"


class CatalogSchemaError(ChextrievError):
    """A catalog whose schema revision is not the one this code uses (or no catalog at all)."""


class CatalogUnavailableError(ChextrievError):
    """The catalog database cannot be reached now (down, restarting, failing over).

    The message names the database (password masked); ``retry_after`` is how many seconds to
    wait before trying again (the server's ``Retry-After``, answered with 503)."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = int(retry_after)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The identifier as stored: raw, or HMAC-SHA256 hex when pseudonymised at ingest.
    key: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    pseudonymised: Mapped[bool] = mapped_column(default=False, nullable=False)
    sex: Mapped[str | None] = mapped_column(String(8))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str | None] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(String(256), nullable=False, index=True)
    source_path: Mapped[str] = mapped_column(Text, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    file_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    format: Mapped[str | None] = mapped_column(String(16))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128), unique=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(128))
    series_instance_uid: Mapped[str | None] = mapped_column(String(128))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    view: Mapped[str | None] = mapped_column(String(32), index=True)
    study_date: Mapped[str | None] = mapped_column(String(16))
    sex: Mapped[str | None] = mapped_column(String(8), index=True)
    age: Mapped[float | None] = mapped_column(Float, index=True)
    height: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    known_findings: Mapped[dict | None] = mapped_column(JSON)  # {finding: 0/1} or NULL
    probabilities: Mapped[dict | None] = mapped_column(JSON)  # {finding: p}
    region_probabilities: Mapped[list | None] = mapped_column(JSON)  # (18, C) nested lists
    boxes: Mapped[list | None] = mapped_column(JSON)  # (18, 4) original pixels, None = missing
    box_source: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    checkpoint_id: Mapped[str | None] = mapped_column(String(32))
    # Row of the exact embedding / region embeddings in the vector store (NULL: none stored).
    vector_slot: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    region_dim: Mapped[int | None] = mapped_column(Integer)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)  # JPEG (older catalogs: PNG)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class Source(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The record key (absolute path, or a ``dicomweb:...`` key of up to a few hundred chars).
    path: Mapped[str] = mapped_column(String(1024), unique=True, nullable=False)
    file_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    image_pk: Mapped[int | None] = mapped_column(ForeignKey("images.id"), index=True)
    updated: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class IndexBuild(Base):
    __tablename__ = "index_builds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    checkpoint_id: Mapped[str | None] = mapped_column(String(32))
    embedding_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    index_type: Mapped[str] = mapped_column(String(32), nullable=False)
    factory: Mapped[str] = mapped_column(String(128), nullable=False)
    n_vectors: Mapped[int] = mapped_column(BigInteger, nullable=False)
    db_state: Mapped[str] = mapped_column(String(64), nullable=False)
    build_dir: Mapped[str] = mapped_column(String(256), nullable=False)


class CatalogState(Base):
    __tablename__ = "catalog_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    store_rows: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    removals: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class WriterLock(Base):
    __tablename__ = "writer_lock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(256))
    started: Mapped[datetime | None] = mapped_column(DateTime)
    command: Mapped[str | None] = mapped_column(Text)


Index("ix_images_status_slot", Image.status, Image.vector_slot)


# ---------------------------------------------------------------------- engine and schema
def default_db_url(index_dir: str | Path) -> str:
    """``sqlite:///<index_dir>/catalog.sqlite`` (the default catalog location)."""
    return f"sqlite:///{Path(index_dir).resolve() / 'catalog.sqlite'}"


def normalise_url(db_url: str) -> str:
    """The SQLAlchemy URL to connect with: ``postgresql://`` and ``postgres://`` (which
    SQLAlchemy maps to psycopg2) use psycopg 3, the driver installed by default; an explicit
    driver (``postgresql+psycopg2://``) is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if db_url.startswith(prefix):
            return "postgresql+psycopg://" + db_url[len(prefix):]
    return db_url


def safe_url(db_url: str) -> str:
    """``db_url`` with any password masked (for logs and error messages)."""
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def sqlite_path(db_url: str) -> Path | None:
    """The file of a file-backed SQLite URL, else None."""
    url = make_url(normalise_url(db_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


# ---------------------------------------------------------------------- catalog state
def catalog_state(session, *, for_update: bool = False) -> CatalogState:
    """The one ``catalog_state`` row (created when missing)."""
    query = select(CatalogState).where(CatalogState.id == 1)
    if for_update and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    state = session.scalars(query).first()
    if state is None:
        state = CatalogState(id=1, generation=0, store_rows=0, removals=0)
        session.add(state)
        session.flush()
    return state


class Pseudonymiser:
    """Keyed HMAC-SHA256 of patient identifiers (hex, 32 characters).

    The same key always gives the same pseudonym, so reruns and several machines agree; without
    the key the pseudonym cannot be reversed or recomputed from a guessed identifier.
    """

    def __init__(self, key: bytes):
        if not key:
            raise ChextrievError("pseudonymisation key is empty")
        self._key = key

    @classmethod
    def from_env_or_file(cls, key_file: str | Path | None = None) -> Pseudonymiser:
        """Key from ``key_file`` when given, else from ``$CHEXTRIEV_PSEUDONYM_KEY``.

        Raises ChextrievError when neither holds a key (pseudonymising without a key would be
        plain hashing, which is reversible by guessing identifiers).
        """
        if key_file is not None:
            path = Path(key_file)
            if not path.is_file():
                raise ChextrievError(f"pseudonymisation key file {path} does not exist")
            key = path.read_bytes().strip()
        else:
            key = os.environ.get(PSEUDONYM_KEY_ENV, "").encode()
        if not key:
            raise ChextrievError(
                "--pseudonymise needs a key: set the environment variable "
                f"{PSEUDONYM_KEY_ENV} or pass --pseudonym-key-file FILE"
            )
        return cls(key)

    def __call__(self, identifier: str) -> str:
        return hmac.new(self._key, identifier.encode(), hashlib.sha256).hexdigest()[:32]
