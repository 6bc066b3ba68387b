"""The door's interface beyond search (what the server codes against): the bundle, per-search
settings, lookups by dataset id and by SOP Instance UID, previews through the catalog, and
``changed()`` (one stat) before ``reload()``."""

from __future__ import annotations

import os
import time

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
