"""The door's interface beyond search (what the server codes against): the bundle, per-search
settings, lookups by dataset id and by SOP Instance UID, previews through the catalog, and
``changed()`` (one stat) before ``reload()``."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from indexer_fakes import clustered_vectors, write_embedded

from chextriev.errors import ChextrievError
from indexer.catalog import (
    Catalog,
    CatalogSchemaError,
    CatalogUnavailableError,
    IndexStateError,
    UnknownImageError,
)


def test_the_errors_of_the_door():
    error = CatalogUnavailableError("the catalog database postgresql://u@db/x is unreachable", 7)
    assert isinstance(error, ChextrievError) and error.retry_after == 7
    assert "postgresql://u@db/x" in str(error)
    assert issubclass(CatalogSchemaError, ChextrievError) and issubclass(IndexStateError, ChextrievError)
    assert issubclass(UnknownImageError, LookupError)


def test_bundle_lookups_and_previews(indexed):
    catalog = Catalog.open(indexed.db_url, indexed.index_dir)
    try:
        assert catalog.bundle is not None and catalog.bundle.checkpoint_id == catalog.checkpoint_id
        assert catalog.bundle.build_id == catalog.build_id
        ids = catalog.index.ids.tolist()
        rows = catalog.images(ids)
        by_name = {row["image_id"]: row["id"] for row in rows}
        assert catalog.lookup("img0") == by_name["img0"] and catalog.lookup("no-such") is None
        dicom = [row for row in rows if row["sop_instance_uid"]]
        assert dicom and all(catalog.lookup_instance(row["sop_instance_uid"]) == row["id"]
                             for row in dicom)
        assert catalog.lookup_instance("1.2.3.4.999") is None
        data, mimetype = catalog.preview_bytes(ids[0])
        assert mimetype == "image/jpeg" and data.startswith(b"\xff\xd8\xff")
        assert catalog.preview_bytes(10**9) is None  # unknown id: no preview (the caller 404s)
    finally:
        catalog.close()


def test_search_settings_per_search(tmp_path):
    index_dir = tmp_path / "idx"
    write_embedded(index_dir, clustered_vectors(3000, dim=16, clusters=40, seed=5),
                   index_type="ivf-pq")
    catalog = Catalog.open(None, index_dir)
    try:
        build = catalog.search_settings()
        assert build["index_type"] == "ivf-pq" and build["nlist"] > 1
        asked = catalog.search_settings(nprobe=10**6, rerank=3)
        assert asked["nprobe"] == build["nlist"] and asked["rerank"] == 3  # capped at nlist
        assert catalog.search_settings(nprobe=2)["nprobe"] == 2
    finally:
        catalog.close()
    flat_dir = tmp_path / "flat"
    write_embedded(flat_dir, clustered_vectors(50, dim=16, seed=6), index_type="flat")
    flat = Catalog.open(None, flat_dir)
    try:
        assert flat.search_settings(nprobe=4, rerank=4) == {
            "index_type": "flat", "nprobe": None, "nlist": None, "rerank": None}
    finally:
        flat.close()


def test_changed_is_true_once_a_newer_build_is_committed(tmp_path):
    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(80, dim=16, seed=7)
    write_embedded(index_dir, vectors[:40])
    catalog = Catalog.open(None, index_dir)
    try:
        assert catalog.changed() is False
        write_embedded(index_dir, vectors[40:], start=40)
        assert catalog.changed() is True and catalog.size == 40
        assert catalog.reload() is True
        assert catalog.changed() is False and catalog.size == 80
        # a manifest rewritten with the same build (touched): changed, and the reload reads nothing
        manifest = index_dir / "manifest.json"
        later = time.time() + 5
        os.utime(manifest, (later, later))
        assert catalog.changed() is True
        assert catalog.reload() is False and catalog.changed() is False
        manifest.rename(index_dir / "gone.json")
        assert catalog.changed() is True
        with pytest.raises(IndexStateError):
            catalog.reload()
        assert catalog.size == 80  # the loaded build keeps serving
    finally:
        catalog.close()


def test_the_model_runs_before_the_write_transaction(archive, tmp_path, catalog_url):
    """No catalog session is open while the writer embeds a batch (the decisions come from a
    short read before, the one write transaction after), and on PostgreSQL nobody holds the
    catalog_state row: another connection locks it at once."""
    from indexer_fakes import FakeEmbedder, embedded_items
    from sqlalchemy import select

    from indexer.db import CatalogState, default_db_url
    from indexer.engine import make_engine, make_sessionmaker
    from indexer.pipeline import IndexSummary
    from indexer.vector_store import open_store
    from indexer.writer import CatalogWriter, WritableCatalog

    root, _ = archive
    index_dir = tmp_path / "idx"
    seen = []

    class Watching(FakeEmbedder):
        def __call__(self, images, boxes=None):
            seen.append(len(open_sessions))
            if probe is not None:  # PostgreSQL: the state row is free to lock right now
                with probe.connect() as connection, connection.begin():
                    connection.execute(select(CatalogState.id).with_for_update(nowait=True))
            return super().__call__(images, boxes=boxes)

    open_sessions: list = []
    with WritableCatalog(index_dir, catalog_url) as writable:
        factory = writable.sessions

        def counted():
            session = factory()
            open_sessions.append(session)
            original = session.close

            def close():
                if session in open_sessions:
                    open_sessions.remove(session)
                original()

            session.close = close
            return session

        probe = (make_engine(catalog_url or default_db_url(index_dir), create=False)
                 if catalog_url else None)
        with factory() as session:
            store = open_store(session, index_dir, dim=FakeEmbedder.embedding_dim, create=True)
        writer = CatalogWriter(counted, Watching(), IndexSummary(), store=store)
        from indexer.decode import decode
        from indexer.discovery import discover

        decoded = [decode(record, 64) for record in discover(root)]
        writer.write(decoded)
        writer.write(embedded_items(np.eye(4, FakeEmbedder.embedding_dim, dtype=np.float32),
                                    start=100))  # pre-embedded: no model call
        if probe is not None:
            probe.dispose()
    assert seen == [0] and not open_sessions
    with make_sessionmaker(make_engine(catalog_url or default_db_url(index_dir),
                                       create=False))() as session:
        assert session.get(CatalogState, 1).store_rows == writer.store.committed > 4


def test_a_build_without_column_files_is_read_from_the_catalog_until_the_next_build(tmp_path, caplog):
    """An index made before column files (its manifest names none) opens from the catalog's
    rows, with the same searches; verify says what is missing; the next build writes them."""
    import json
    import logging

    from indexer.engine import open_sessions
    from indexer.sync import sync_index
    from indexer.verify import verify

    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(90, dim=16, seed=8)
    write_embedded(index_dir, vectors)
    with_columns = Catalog.open(None, index_dir)
    expected = with_columns.search(vectors[:3], 5, filters={"sex": "F"})
    with_columns.close()
    manifest = index_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["columns"]  # what an index built before column files looks like
    manifest.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="indexer.catalog"):
        old = Catalog.open(None, index_dir)
    try:
        assert "no search column files" in caplog.text and old.size == 90
        assert not isinstance(old._snap.columns.ids, np.memmap)
        assert old.search(vectors[:3], 5, filters={"sex": "F"}) == expected
    finally:
        old.close()
    sessions = open_sessions(None, index_dir)
    assert any("no search column files" in p for p in verify(sessions, index_dir))
    sync_index(sessions, index_dir, checkpoint_id=data["checkpoint_id"], dim=16)
    assert verify(sessions, index_dir) == []
    fresh = Catalog.open(None, index_dir)
    try:
        assert isinstance(fresh._snap.columns.ids, np.memmap)
        assert fresh.search(vectors[:3], 5, filters={"sex": "F"}) == expected
    finally:
        fresh.close()


def test_damaged_column_files_are_found_by_verify_and_rewritten_by_repair(tmp_path):
    from indexer.engine import open_sessions
    from indexer.sync import repair
    from indexer.verify import verify

    index_dir = tmp_path / "idx"
    write_embedded(index_dir, clustered_vectors(60, dim=16, seed=9))
    catalog = Catalog.open(None, index_dir)
    columns = catalog.manifest.columns
    catalog.close()
    age = index_dir / "columns" / columns["set"] / "age.f64"
    raw = bytearray(age.read_bytes())
    raw[8:16] = np.float64(123.0).tobytes()  # the second image's age
    age.write_bytes(bytes(raw))
    sessions = open_sessions(None, index_dir)
    problems = verify(sessions, index_dir)
    assert len(problems) == 1 and "search column age differs" in problems[0] and "[2]" in problems[0]
    repair(sessions, index_dir)
    assert verify(sessions, index_dir) == []
