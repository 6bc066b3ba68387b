"""Schema revisions through Alembic, on SQLite and PostgreSQL: a catalog at revision 0001 (the
chextriev 0.1 schema: vectors and PNG thumbnails in SQL rows) is refused with the command to
run, upgraded in place by `chextriev db upgrade` with its rows kept (the vectors move into the
vector store), and then serves searches; a catalog made before Alembic counts as 0001."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage

from chextriev.vocab import IMAGENOME_FINDINGS
from indexer import cli, migrations
from indexer.catalog import Catalog
from indexer.db import CatalogSchemaError, default_db_url, normalise_url
from indexer.engine import make_engine
from indexer.sync import repair
from indexer.verify import verify


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _png(seed):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32), np.uint8)
    PILImage.fromarray(pixels, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _old_catalog(url, n=12, dim=16, region_dim=4, legacy=False):
    """A catalog at revision 0001 with ``n`` indexed rows, as chextriev 0.1 wrote them."""
    from alembic import command

    engine = sa.create_engine(normalise_url(url))
    with engine.begin() as connection:
        command.upgrade(migrations._config(connection), "0001")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    regions = rng.standard_normal((n, 18, region_dim)).astype(np.float16)
    meta = sa.MetaData()
    meta.reflect(engine)
    images, sources = meta.tables["images"], meta.tables["sources"]
    now = sa.func.now() if engine.dialect.name == "postgresql" else sa.text("CURRENT_TIMESTAMP")
    with engine.begin() as connection:
        for i in range(n):
            pk = connection.execute(images.insert().returning(images.c.id).values(
                image_id=f"old{i}", source_path=f"/old/{i}.png", content_hash=f"{i:064x}",
                file_size=10, mtime_ns=i, format="png", status="indexed", checkpoint_id="ck01",
                embedding=vectors[i].tobytes(), region_embedding=regions[i].tobytes(),
                region_dim=region_dim, thumbnail=_png(i), view="PA",
                probabilities={c: 0.1 for c in IMAGENOME_FINDINGS},
                boxes=[[1.0, 2.0, 3.0, 4.0]] * 18, box_source="atlas", created=now,
                updated=now)).scalar()
            connection.execute(sources.insert().values(
                path=f"/old/{i}.png", file_size=10, mtime_ns=i, content_hash=f"{i:064x}",
                image_pk=pk, updated=now))
        connection.execute(images.insert().values(
            image_id="lateral", source_path="/old/lat.png", content_hash="f" * 64, file_size=1,
            mtime_ns=1, status="skipped", reason="non-frontal view LL", created=now,
            updated=now))
        if legacy:  # made before Alembic: no version table
            connection.execute(sa.text("DROP TABLE alembic_version"))
    engine.dispose()
    return vectors, regions


def _columns(url):
    engine = make_engine(url, create=False, check=False, schema=False)
    inspector = sa.inspect(engine)
    out = {t: sorted(c["name"] for c in inspector.get_columns(t))
           for t in inspector.get_table_names() if t != "alembic_version"}
    engine.dispose()
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["rev0001", "pre-alembic"])
def test_upgrade_0001_to_head_keeps_rows(tmp_path, catalog_url, legacy):
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    url = catalog_url or default_db_url(index_dir)
    vectors, regions = _old_catalog(url, legacy=legacy)
    # A format-1 index beside it, as chextriev 0.1 saved it.
    (index_dir / "builds" / "b1").mkdir(parents=True)
    (index_dir / "manifest.json").write_text(json.dumps({"build_id": "b1", "build_dir": "builds/b1"}))
    with pytest.raises(CatalogSchemaError, match="chextriev db upgrade"):
        make_engine(url)
    with pytest.raises(CatalogSchemaError, match="revision 0001"):
        Catalog.open(url, index_dir)
    db = ["--db", url]
    with pytest.raises(Exception, match="--index-dir DIR"):  # the vectors need a place to go
        _run(["db", "upgrade", *db])
    assert _run(["db", "upgrade", *db, "--index-dir", str(index_dir)]) == 0
    engine = make_engine(url, create=False)  # current now
    with engine.connect() as connection:
        assert migrations.current_revision(connection) == migrations.HEAD
        rows = connection.execute(sa.text(
            "SELECT image_id, vector_slot, status FROM images ORDER BY id")).all()
    engine.dispose()
    assert len(rows) == 13 and rows[-1] == ("lateral", None, "skipped")
    assert [r[1] for r in rows[:-1]] == list(range(12))
    # The upgraded schema is the schema of a new catalog.
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    make_engine(fresh).dispose()
    assert _columns(url) == _columns(fresh)
    # The old index layout is rebuilt from the catalog; then everything reads back.
    with pytest.raises(Exception, match="index repair"):
        Catalog.open(url, index_dir)
    assert _run(["index", "repair", "--index-dir", str(index_dir), *db]) == 0
    catalog = Catalog.open(url, index_dir)
    assert catalog.size == 12 and catalog.checkpoint_id == "ck01"
    np.testing.assert_allclose(catalog.vectors(catalog.index.ids), vectors, atol=1e-6)
    got = catalog.region_embeddings(catalog.index.ids.tolist())
    np.testing.assert_allclose(got, regions.astype(np.float32), atol=0.02)
    hits = catalog.search(vectors, k=1)
    assert [h[0].image_id for h in hits] == catalog.index.ids.tolist()
    assert catalog.thumbnail_bytes(int(catalog.index.ids[0])) == (_png(0), "image/png")  # old PNGs as stored
    sessions = sa.orm.sessionmaker(make_engine(url, create=False))
    assert verify(sessions, index_dir) == []
    assert repair(sessions, index_dir).n_vectors == 12
    assert not (index_dir / "builds").exists()  # the format-1 build was swept


def test_unknown_newer_revision_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    make_engine(url).dispose()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(CatalogSchemaError, match="newer chextriev"):
        make_engine(url)


def test_no_catalog_is_named(tmp_path, postgres_url):
    with pytest.raises(CatalogSchemaError, match="no catalog"):
        make_engine(postgres_url, create=False)
    with pytest.raises(CatalogSchemaError, match="no catalog"):
        make_engine(f"sqlite:///{tmp_path / 'none.sqlite'}", create=False)
