"""The read side at scale and per request: Catalog metadata read in bulk (and incrementally on
reload), per-search nprobe and re-rank depth, and the bundle the index records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, clustered_vectors, write_embedded
from sqlalchemy import update

from indexer.bundle import BUNDLE_KEY, BuildRecord, BundleError, read_bundle
from indexer.catalog import Catalog
from indexer.db import Image
from indexer.engine import make_engine, make_sessionmaker
from indexer.sync import remove_images
from indexer.verify import verify


def _sessions(index_dir, db_url):
    from indexer.db import default_db_url

    return make_sessionmaker(make_engine(db_url or default_db_url(index_dir), create=False))


def _expected(catalog: Catalog) -> dict:
    """The snapshot's columns recomputed row by row from ``catalog.images`` (the reference
    semantics: a finding holds by its known label when the image has labels, else p >= 0.5)."""
    rows = catalog.images(catalog._snap.ids.tolist())
    names = catalog.class_names

    def holds(row, name):
        known = row["known_findings"]
        if known:
            return bool(known.get(name, 0))
        return float((row["probabilities"] or {}).get(name, 0.0)) >= 0.5

    return {"view": [(r["view"] or "").upper() for r in rows],
            "sex": [(r["sex"] or "").upper() for r in rows],
            "age": [np.nan if r["age"] is None else r["age"] for r in rows],
            "holds": np.array([[holds(r, n) for n in names] for r in rows], bool)}


def _columns(catalog: Catalog) -> dict:
    columns = catalog._snap.columns
    holds = [columns.holds(c, 0.5) for c in range(len(columns.class_names))]
    return {"view": [columns.views[c] for c in columns.view],
            "sex": [columns.sexes[c] for c in columns.sex], "age": np.asarray(columns.age).tolist(),
            "holds": np.stack(holds, axis=1) if holds else np.zeros((len(columns), 0), bool)}


def _assert_same(got: dict, want: dict) -> None:
    assert got["view"] == want["view"] and got["sex"] == want["sex"]
    np.testing.assert_array_equal(np.array(got["age"], float), np.array(want["age"], float))
    np.testing.assert_array_equal(got["holds"], want["holds"])


def _assert_same_snapshot(catalog: Catalog, fresh: Catalog) -> None:
    """A reloaded catalog holds what a fresh open reads: arrays and columns."""
    for name in ("ids", "slots", "patient", "age", "findings"):
        np.testing.assert_array_equal(getattr(catalog._snap.columns, name),
                                      getattr(fresh._snap.columns, name))
    _assert_same(_columns(catalog), _columns(fresh))


def test_catalog_columns_are_the_builds_files_and_a_reload_maps_the_new_ones(tmp_path, catalog_url):
    """The search columns are written with each build (appended while images are only added,
    a new set after removals), equal the catalog's rows, and a reload maps the new build's."""
    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(260, dim=32, seed=3)
    write_embedded(index_dir, vectors[:200], db_url=catalog_url, sync=False)
    sessions = _sessions(index_dir, catalog_url)
    with sessions() as session:  # labels on some rows: known labels win over predictions there
        session.execute(update(Image).where(Image.id <= 20).values(
            known_findings={"lung opacity": 1, "pneumothorax": 0}))
        session.execute(update(Image).where(Image.id.between(21, 30)).values(known_findings={}))
        session.execute(update(Image).where(Image.id.between(31, 40)).values(view="ap", sex=None,
                                                                             age=None))
        session.commit()
    write_embedded(index_dir, vectors[:0], db_url=catalog_url)  # the build of those rows
    catalog = Catalog.open(catalog_url, index_dir)
    try:
        first_set = catalog.manifest.columns["set"]
        assert isinstance(catalog._snap.columns.ids, np.memmap)  # mapped, not read
        _assert_same(_columns(catalog), _expected(catalog))
        assert catalog._snap.columns.holds(catalog.class_names.index("lung opacity"), 0.5)[:20].all()
        # grow (another run): the columns are appended to the same files, the reload maps them
        write_embedded(index_dir, vectors[200:230], db_url=catalog_url, start=200)
        assert catalog.changed() and catalog.reload() is True and catalog.size == 230
        assert catalog.manifest.columns["set"] == first_set
        fresh = Catalog.open(catalog_url, index_dir)
        try:
            _assert_same_snapshot(catalog, fresh)
        finally:
            fresh.close()
        # grow and shrink (remove), then reload: a new column set without the removed images
        write_embedded(index_dir, vectors[230:], db_url=catalog_url, start=230)
        remove_images(sessions, index_dir, [5, 150])
        previous = catalog._snap
        assert catalog.reload() is True
        assert catalog._snap is not previous and catalog.size == 258
        assert catalog.manifest.columns["set"] != first_set
        assert not np.isin([5, 150], catalog._snap.ids).any()
        fresh = Catalog.open(catalog_url, index_dir)
        try:
            _assert_same_snapshot(catalog, fresh)
            _assert_same(_columns(catalog), _expected(catalog))
            query = vectors[7:9]
            for options in ({}, {"filters": {"view": "AP"}}, {"filters": {"sex": "F", "age_min": 30}},
                            {"filters": {"finding": "lung opacity"}},
                            {"exclude_patients": [catalog.images([7])[0]["patient"]]}):
                assert catalog.search(query, 10, **options) == fresh.search(query, 10, **options)
            patient = catalog.images([7])[0]["patient"]
            hits = catalog.search(query[:1], 50, exclude_patients=[patient])[0]
            assert hits and all(row["patient"] != patient
                                for row in catalog.images([h.image_id for h in hits]))
        finally:
            fresh.close()
        assert catalog.reload() is False  # same build: nothing read
        assert verify(sessions, index_dir) == []
    finally:
        catalog.close()


def test_new_images_are_readable_before_the_reload(tmp_path):
    """Vectors of images committed after the snapshot come from the store at its length now."""
    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(60, dim=16, seed=1)
    write_embedded(index_dir, vectors[:40])
    catalog = Catalog.open(None, index_dir)
    try:
        write_embedded(index_dir, vectors[40:], start=40, sync=False)
        got = catalog.vectors([46])  # ids are 1-based: item 45 is id 46
        np.testing.assert_allclose(got[0], vectors[45] / np.linalg.norm(vectors[45]), atol=1e-5)
        assert catalog.region_embeddings([46]).shape[:2] == (1, 18)
    finally:
        catalog.close()


def test_nprobe_and_rerank_are_per_search(tmp_path):
    vectors = clustered_vectors(3000, dim=32, clusters=60, seed=2)
    queries = vectors[:40] + 0.05 * np.random.default_rng(0).standard_normal((40, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T),
                       axis=1)[:, :10] + 1  # ids are 1-based row numbers

    def recall(catalog, **options):
        hits = catalog.search(queries, 10, **options)
        return np.mean([len({h.image_id for h in row} & set(truth)) / 10
                        for row, truth in zip(hits, exact.tolist())])

    for index_type, option, low, high in (("ivf-flat", "nprobe", 1, 64), ("ivf-pq", "rerank", 1, 32)):
        index_dir = tmp_path / index_type
        write_embedded(index_dir, vectors, index_type=index_type)
        catalog = Catalog.open(None, index_dir)
        try:
            settings = catalog.search_settings()
            assert settings["index_type"] == index_type and settings["nlist"] > 1
            assert (settings["rerank"] is None) == (index_type != "ivf-pq")
            base = {"nprobe": settings["nlist"]} if option == "rerank" else {}
            worse, better = recall(catalog, **base, **{option: low}), recall(catalog, **base, **{option: high})
            assert better > worse, (index_type, worse, better)
            if index_type == "ivf-flat":
                assert better == 1.0  # every list scanned: exact
        finally:
            catalog.close()


def test_the_bundle_is_recorded_and_carried_over(tmp_path, fake_embedder):
    """``run_index`` records the bundle at every save; repair and remove carry it over."""
    from indexer_fakes import make_archive

    from indexer.pipeline import run_index
    from indexer.sync import repair

    root = tmp_path / "archive"
    make_archive(root)
    index_dir = tmp_path / "idx"
    run_index(root, embedder=fake_embedder, index_dir=index_dir, batch_size=4, progress=False,
              index_type="flat", nprobe=7)
    data = json.loads((index_dir / "manifest.json").read_text())
    bundle = data[BUNDLE_KEY]
    assert bundle["checkpoint"] is None  # the fake embedder has no file
    assert bundle["model"]["checkpoint_id"] == FakeEmbedder.checkpoint_id
    assert bundle["model"]["embedding_dim"] == fake_embedder.embedding_dim
    assert bundle["build"]["index_type"] == "flat" and bundle["boxes"]["otherwise"] == "atlas"
    read = read_bundle(index_dir)
    assert read.nprobe == 7 and read.checkpoint_id == FakeEmbedder.checkpoint_id
    with pytest.raises(BundleError, match="does not record its checkpoint.*--checkpoint"):
        read.checkpoint_file()
    sessions = _sessions(index_dir, None)
    before = read_bundle(index_dir).build_id
    repair(sessions, index_dir)
    remove_images(sessions, index_dir, [1])
    after = read_bundle(index_dir)
    assert after.build_id != before and after.data == read.data
    with pytest.raises(BundleError, match="needs a checkpoint file"):
        BuildRecord.from_embedder(fake_embedder, index_dir=index_dir, index_type="auto",
                                  device="cpu", copy=True)


def test_the_finding_filter_counts_predictions_at_the_given_thresholds(tmp_path, catalog_url):
    """Predicted findings count at each class's threshold (the checkpoint's, as the server
    shows them), known labels still win, and a reload keeps the thresholds."""
    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(120, seed=3)
    write_embedded(index_dir, vectors, db_url=catalog_url, sync=False)
    sessions = _sessions(index_dir, catalog_url)
    with sessions() as session:  # labelled rows (before the build that reads them)
        session.execute(update(Image).where(Image.id <= 10).values(known_findings={"lung opacity": 0}))
        session.commit()
        rows = session.query(Image.id, Image.probabilities).order_by(Image.id).all()
    write_embedded(index_dir, vectors[:0], db_url=catalog_url)
    p = np.array([row.probabilities["lung opacity"] for row in rows])
    cut = float(np.quantile(p, 0.8))  # far from 0.5: the two rules select different images
    assert ((p >= cut) != (p >= 0.5)).sum() > 10

    def matched(catalog):
        hits = catalog.search(vectors[:1], 120, filters={"finding": "lung opacity"})[0]
        return {h.image_id for h in hits}

    ids = np.array([row.id for row in rows])
    unlabelled = ids > 10
    plain = Catalog.open(catalog_url, index_dir)
    tuned = Catalog.open(catalog_url, index_dir, finding_thresholds={"lung opacity": cut})
    try:
        assert matched(plain) == set(ids[unlabelled & (p >= 0.5)].tolist())
        assert matched(tuned) == set(ids[unlabelled & (p >= cut)].tolist())
        write_embedded(index_dir, clustered_vectors(20, seed=4), db_url=catalog_url, start=120)
        assert tuned.reload() is True
        with sessions() as session:
            new = session.query(Image.id, Image.probabilities).filter(Image.id > 120).all()
        grown = set(ids[unlabelled & (p >= cut)].tolist()) | {
            row.id for row in new if row.probabilities["lung opacity"] >= cut}
        hits = tuned.search(vectors[:1], 140, filters={"finding": "lung opacity"})[0]
        assert {h.image_id for h in hits} == grown
    finally:
        plain.close()
        tuned.close()
