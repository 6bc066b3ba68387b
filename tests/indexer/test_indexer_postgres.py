"""PostgreSQL specifics: the `postgresql://user@host/db` spelling works as written, ledger keys of
a few hundred characters (DICOMweb) fit the unique index, and writes are batched: the number of
statements per batch does not grow with the batch size (one round trip per batch, not per row)."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from indexer_fakes import clustered_vectors, embedded_items, open_sessions, write_embedded

from indexer.catalog import Catalog
from indexer.db import Source, normalise_url
from indexer.engine import make_engine
from indexer.verify import verify


def test_bare_postgresql_url(postgres_server):
    url = postgres_server.create_database()
    assert url.startswith("postgresql://") and "+" not in url.split("://")[0]
    assert normalise_url(url).startswith("postgresql+psycopg://")
    engine = make_engine(url)  # creates and stamps the catalog
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()


def test_long_ledger_keys(tmp_path, postgres_url):
    key = ("dicomweb:https://pacs.example.org/dicom-web/studies/" + "1.2.840.10008." * 6
           + "/series/" + "1.3.6.1.4.1." * 6 + "/instances/" + "2.25." + "9" * 60)
    assert 280 <= len(key) <= 400
    make_engine(postgres_url).dispose()
    sessions = open_sessions(tmp_path, postgres_url)
    with sessions() as s:
        s.add(Source(path=key, file_size=0, mtime_ns=0))
        s.commit()
        assert s.scalar(sa.select(Source.path).where(Source.path == key)) == key


def _statements_per_batch(tmp_path, url, batch):
    """Statements the writer sends for one batch of ``batch`` new images."""
    from indexer_fakes import _Info

    from indexer.pipeline import IndexSummary
    from indexer.vector_store import open_store
    from indexer.writer import CatalogWriter, WritableCatalog

    index_dir = tmp_path / f"b{batch}"
    with WritableCatalog(index_dir, url) as catalog:
        with catalog.sessions() as session:
            store = open_store(session, index_dir, dim=32, create=True)
        writer = CatalogWriter(catalog.sessions, _Info(32), IndexSummary(), store=store)
        writer.write(embedded_items(clustered_vectors(4), start=10_000))  # warm up
        count = []
        sa.event.listen(catalog.engine, "before_cursor_execute",
                        lambda *args, **kwargs: count.append(1))
        writer.write(embedded_items(clustered_vectors(batch, seed=batch), start=0))
    return len(count)


def test_writes_are_batched(tmp_path, postgres_server):
    small = _statements_per_batch(tmp_path, postgres_server.create_database(), 10)
    large = _statements_per_batch(tmp_path, postgres_server.create_database(), 400)
    assert large == small, (small, large)
    assert small <= 16


def test_catalog_on_postgres_end_to_end(tmp_path, postgres_url):
    vectors = clustered_vectors(600, seed=2)
    write_embedded(tmp_path / "idx", vectors, db_url=postgres_url, batch=128)
    catalog = Catalog.open(postgres_url, tmp_path / "idx")
    assert catalog.size == 600
    hits = catalog.search(vectors[:5], k=1)
    rows = catalog.images([h[0].image_id for h in hits])
    assert [r["image_id"] for r in rows] == [f"img{i}" for i in range(5)]
    np.testing.assert_allclose(catalog.vectors([h[0].image_id for h in hits]), vectors[:5],
                               atol=1e-6)
    assert verify(open_sessions(tmp_path / "idx", postgres_url), tmp_path / "idx") == []
