"""The pseudonymised ledger: with --pseudonymise the catalog file (SQLite's main file and its
WAL, read as bytes; PostgreSQL's rows and table files) holds none of the indexed files' paths,
names or UIDs, incremental reruns still index only what is new, a run with another key or
without --pseudonymise is refused, and `chextriev db upgrade` converts the clear ledger an
earlier chextriev left (the key required, and checked). The DICOMweb case is in
tests/dicomweb/test_dicomweb_index.py."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pydicom
import pytest
from indexer_fakes import FakeEmbedder, write_dicom, write_png
from sqlalchemy import select, text

from chextriev.errors import ChextrievError
from chextriev.io.deid import LEDGER_PREFIX, Deidentifier, key_id
from indexer import cli
from indexer.db import Image, Source, default_db_url, sqlite_path
from indexer.decode import IngestPolicy
from indexer.engine import make_engine, make_sessionmaker
from indexer.ledger import LedgerModeError
from indexer.pipeline import run_index
from indexer.verify import verify

KEY = "ledger-test-key-0123"


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def _archive(root: Path, start: int = 0, n: int = 4) -> list[Path]:
    """DICOMs of two named patients in named folders, and PNGs with telling names."""
    files = []
    for i in range(start, start + n):
        files.append(write_dicom(root / f"patient-ward{i % 2}" / f"smith_john_{i}.dcm", 50 + i,
                                 patient=f"MRN-{7000 + i % 2}"))
        files.append(write_png(root / "outpatients" / f"jones_mary_{i}.png", 90 + i))
    return files


def _raw_values(files: list[Path]) -> set[str]:
    """Every path, folder and file name, stem and DICOM identifier of ``files``."""
    raw = set()
    for path in files:
        raw |= {str(path), str(path.resolve()), path.name, path.stem, path.parent.name}
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            raw |= {str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID)}
    return raw


def _index(root, index_dir, db_url, *, key=KEY, workers=0, **options):
    policy = IngestPolicy(Deidentifier(key.encode())) if key else None
    return run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=db_url,
                     batch_size=3, progress=False, policy=policy, workers=workers, **options)


def catalog_bytes(index_dir: Path, db_url: str | None) -> dict[str, bytes]:
    """What the catalog holds, as bytes: SQLite's main file and WAL; PostgreSQL's rows (every
    table as text) and, when readable (root), the database's table and index files after a
    CHECKPOINT."""
    url = db_url or default_db_url(index_dir)
    path = sqlite_path(url)
    if path is not None:
        return {name: p.read_bytes() for name, p in
                (("main", path), ("wal", path.with_name(path.name + "-wal"))) if p.exists()}
    engine = make_engine(url, create=False)
    out: dict[str, bytes] = {}
    with engine.connect() as connection:
        tables = connection.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            rows = connection.execute(text(f'SELECT t::text FROM "{table}" t')).scalars().all()
            out[f"rows:{table}"] = "\n".join(rows).encode()
        folder = connection.execute(text(
            "SELECT current_setting('data_directory') || '/base/' || oid FROM pg_database "
            "WHERE datname = current_database()")).scalar()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CHECKPOINT"))
    engine.dispose()
    try:
        for file in sorted(Path(folder).iterdir()):
            out[f"file:{file.name}"] = file.read_bytes()
    except PermissionError:  # not root: the rows alone
        pass
    return out


def leaks(index_dir, db_url, raw: set[str]) -> list[tuple[str, str]]:
    found = []
    for where, data in catalog_bytes(index_dir, db_url).items():
        found += [(where, value) for value in sorted(raw) if value.encode() in data]
    return found


def test_a_pseudonymised_catalog_holds_no_path_name_or_uid_and_reruns_are_incremental(
        tmp_path, catalog_url):
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    files = _archive(root)
    first = _index(root, index_dir, catalog_url)
    assert first.indexed == len(files) and first.failed == 0
    raw = _raw_values(files)
    assert not leaks(index_dir, catalog_url, raw)
    sessions = make_sessionmaker(make_engine(catalog_url or default_db_url(index_dir)))
    with sessions() as session:
        stored = session.scalars(select(Source.path)).all()
        paths = session.scalars(select(Image.source_path)).all()
    mine = f"{LEDGER_PREFIX}{key_id(KEY.encode())}:file:"
    assert len(stored) == len(files) and all(p.startswith(mine) for p in stored + paths)
    # the same key gives the same hash: a rerun opens nothing; new and changed files only
    held = None
    if catalog_url is None:  # a second connection keeps the WAL (with the rerun's frames)
        held = sqlite3.connect(index_dir / "catalog.sqlite")
        held.execute("SELECT count(*) FROM sources").fetchone()
    try:
        again = _index(root, index_dir, catalog_url)
        assert again.indexed == 0 and again.unchanged == len(files)
        more = _archive(root, start=10, n=2)
        write_png(files[1], 999)  # new content at a known path
        third = _index(root, index_dir, catalog_url, workers=2)
        assert third.indexed == len(more) + 1 and third.unchanged == len(files) - 1
        assert third.replaced == 1
        raw |= _raw_values(more)
        if held is not None:
            wal = index_dir / "catalog.sqlite-wal"
            assert wal.stat().st_size > 0  # the WAL really holds the rerun's writes
        assert not leaks(index_dir, catalog_url, raw)
    finally:
        if held is not None:
            held.close()
    assert verify(sessions, index_dir) == []
    # a run without --pseudonymise, or with another key, would mix the ledger: refused
    with pytest.raises(LedgerModeError, match="is pseudonymised"):
        _index(root, index_dir, catalog_url, key=None)
    with pytest.raises(LedgerModeError, match="another key"):
        _index(root, index_dir, catalog_url, key="some-other-key")


def test_without_pseudonymise_the_ledger_keeps_paths(tmp_path):
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    files = _archive(root, n=2)
    _index(root, index_dir, None, key=None)
    with make_sessionmaker(make_engine(default_db_url(index_dir)))() as session:
        assert sorted(session.scalars(select(Source.path))) == sorted(
            str(p.resolve()) for p in files)
    with pytest.raises(LedgerModeError, match="in the clear"):
        _index(root, index_dir, None)  # a pseudonymised run into a clear ledger


def test_db_upgrade_converts_the_clear_ledger_of_a_pseudonymised_catalog(
        tmp_path, catalog_url, monkeypatch):
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    files = _archive(root)
    broken = root / "outpatients" / "doe_jane_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a failed row keeps its key too
    # The catalog an earlier chextriev wrote under --pseudonymise: identifiers pseudonymised,
    # the ledger in the clear (its decoding workers kept the record key as it was).
    with monkeypatch.context() as patch:
        patch.setattr(Deidentifier, "ledger_key", lambda self, key: key)
        old = _index(root, index_dir, catalog_url)
    assert old.indexed == len(files) and old.failed == 1
    raw = _raw_values(files + [broken])
    assert leaks(index_dir, catalog_url, {str(files[0].resolve())})  # the clear paths are there
    with pytest.raises(LedgerModeError, match="db upgrade"):
        _index(root, index_dir, catalog_url)
    where = ["--index-dir", str(index_dir)] + (["--db", catalog_url] if catalog_url else [])
    monkeypatch.delenv("CHEXTRIEV_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ChextrievError, match=r"indexed with --pseudonymise.*needs a key: set "
                                             r"the environment variable CHEXTRIEV_PSEUDONYM_KEY"):
        _run("db", "upgrade", *where)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-key")
    with pytest.raises(ChextrievError, match="does not reproduce the pseudonyms"):
        _run("db", "upgrade", *where, "--pseudonym-key-file", str(wrong))
    assert leaks(index_dir, catalog_url, {str(files[0].resolve())})  # nothing changed yet
    monkeypatch.setenv("CHEXTRIEV_PSEUDONYM_KEY", KEY)
    assert _run("db", "upgrade", *where) == 0
    assert not leaks(index_dir, catalog_url, raw)
    # the converted catalog goes on incrementally: nothing is indexed twice
    again = _index(root, index_dir, catalog_url)
    assert again.indexed == 0 and again.unchanged == len(files) + 1
    sessions = make_sessionmaker(make_engine(catalog_url or default_db_url(index_dir)))
    assert verify(sessions, index_dir) == []
    assert _run("db", "upgrade", *where) == 0  # converted: nothing more to do
