"""The catalog database: SQLAlchemy 2.0 ORM models, portable across SQLite and PostgreSQL.

Tables
------
``patients``      one row per (optionally pseudonymised) patient identifier.
``studies``       one row per study (StudyInstanceUID or the manifest's study id).
``images``        one row per distinct image content (unique ``content_hash``; unique
                  ``sop_instance_uid`` when DICOM; the study, series and SOP instance UIDs
                  stored as keyed HMACs when the run pseudonymises): metadata, predictions,
                  boxes, status
                  (``indexed`` / ``skipped`` / ``failed`` / ``removed``), the exact embedding
                  (float32 bytes, ``(D,)``), the region embeddings (float16 bytes, ``(18, R)``)
                  and a small PNG thumbnail. The database is the durable source of truth: the
                  Faiss index is derived from the ``indexed`` rows.
``sources``       the ledger of discovered records (``path`` = the record key: a file's path or
                  ``dicomweb:<root>/studies/..``; size, mtime, hash) pointing at the image
                  row holding their content; duplicates are sources that point at an image whose
                  ``source_path`` is another file. Reruns skip sources whose size and mtime are
                  unchanged.
``index_builds``  one row per saved Faiss index build.

Only portable SQL types are used (Integer, BigInteger, String, Text, Float, DateTime,
LargeBinary, JSON); SQLite gets WAL mode and a busy timeout through a connect hook.
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
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from chextriev.errors import ChextrievError

STATUS_INDEXED = "indexed"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
STATUS_REMOVED = "removed"
STATUSES = (STATUS_INDEXED, STATUS_SKIPPED, STATUS_FAILED, STATUS_REMOVED)

PSEUDONYM_KEY_ENV = "CHEXTRIEV_PSEUDONYM_KEY"


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
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 (D,)
    region_embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float16 (18, R)
    region_dim: Mapped[int | None] = mapped_column(Integer)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary)  # PNG
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated: Mapped[datetime] = mapped_column(
        DateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class Source(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
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


def default_db_url(index_dir: str | Path) -> str:
    """``sqlite:///<index_dir>/catalog.sqlite`` (the default catalog location)."""
    return f"sqlite:///{Path(index_dir).resolve() / 'catalog.sqlite'}"


def make_engine(db_url: str, *, create: bool = True) -> Engine:
    """An engine for ``db_url``; SQLite gets WAL, ``synchronous=NORMAL`` and foreign keys.

    With ``create`` the tables are created when missing (idempotent).
    """
    if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
        Path(db_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(db_url, future=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    if create:
        Base.metadata.create_all(engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


def db_state(session) -> str:
    """A hash of the indexed set: sha256 over the sorted ids and content hashes of ``indexed`` rows.

    The index manifest records it, so ``verify`` and :class:`~indexer.catalog.Catalog` can tell
    whether an index reflects the database.
    """
    digest = hashlib.sha256()
    rows = session.execute(
        select(Image.id, Image.content_hash).where(Image.status == STATUS_INDEXED).order_by(Image.id)
    )
    for pk, content_hash in rows:
        digest.update(f"{pk}:{content_hash};".encode())
    return digest.hexdigest()


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
