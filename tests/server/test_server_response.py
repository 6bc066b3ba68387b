"""The response stage of a search: the catalog rows of the results read once (one query, their
status in them; images removed since the loaded build dropped), region embeddings from the
build's mapped columns (no query), the query preview encoded beside the model."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, event, text

from chextriev.io.images import load_image
from chextriev.io.pixels import PREVIEW_SIDE
from server import create_app
from server.preview import QueryPreview, preview_url


@pytest.fixture()
def own_app(tiny_index, tmp_path):
    """An app on a copy of the tiny index (its catalog is changed behind the server's back)."""
    index_dir = tmp_path / "index"
    shutil.copytree(tiny_index.index_dir, index_dir)
    db_url = f"sqlite:///{index_dir / 'catalog.sqlite'}"
    app = create_app({"CHECKPOINT": str(tiny_index.checkpoint), "DB_URL": db_url, "INDEX_DIR": str(index_dir),
                      "LOAD": "sync"})
    service = app.extensions["chextriev"]
    assert service.ready, service.error
    yield app, db_url
    service.catalog.close()


def _statements(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_rows_of_hits_is_one_query_and_region_embeddings_none(own_app):
    app, _ = own_app
    svc = app.extensions["chextriev"]
    ids = [int(i) for i in svc.catalog.index.ids]
    hits = svc.search_hits(svc.vector(ids[0]), 5)
    seen = _statements(svc.catalog.engine)
    kept, rows = svc.rows_of_hits(hits, 5)
    assert len(seen) == 1, seen
    assert [h.image_id for h in kept] == [h.image_id for h in hits[:5]]
    assert [row["id"] for row in rows] == [h.image_id for h in kept]
    assert rows == svc.images([h.image_id for h in kept])
    seen.clear()
    regions = svc.region_embeddings([h.image_id for h in kept])
    assert seen == []  # slots from the build's mapped columns
    assert regions.shape[:2] == (5, 18)
    np.testing.assert_array_equal(regions[1:2], svc.region_embeddings([kept[1].image_id]))


def test_a_result_removed_since_the_loaded_build_is_dropped_and_k_still_answered(own_app):
    app, db_url = own_app
    svc = app.extensions["chextriev"]
    client = app.test_client()
    query = int(svc.catalog.index.ids[0])
    first = client.post(f"/api/v1/search/by-id/{query}", data={"k": "4"}).get_json()["results"]
    gone = first[1]["id"]
    engine = create_engine(db_url)  # the catalog changes; the loaded build still holds `gone`
    with engine.begin() as connection:
        connection.execute(text("UPDATE images SET status = 'removed' WHERE id = :id"), {"id": gone})
    engine.dispose()
    assert gone in [int(h.image_id) for h in svc.search_hits(svc.vector(query), 4)]
    again = client.post(f"/api/v1/search/by-id/{query}", data={"k": "4"}).get_json()["results"]
    assert gone not in [r["id"] for r in again] and len(again) == 4
    assert [r["id"] for r in again][:1] == [first[0]["id"]]
    assert [r["rank"] for r in again] == [1, 2, 3, 4]


def test_upload_query_preview_is_the_encoded_preview_of_the_upload(own_app, query_png):
    app, _ = own_app
    data = query_png.read_bytes()
    payload = app.test_client().post("/api/v1/search", data={"image": (io.BytesIO(data), "q.png"), "k": "3"},
                                     content_type="multipart/form-data").get_json()
    url = payload["query"]["preview_url"]
    assert url == preview_url(load_image(data))
    preview = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert preview.format == "JPEG" and preview.mode == "L" and max(preview.size) <= PREVIEW_SIDE
    assert payload["timing_ms"]["response"] >= 0 and len(payload["results"]) == 3


def test_query_preview_shrinks_large_images_and_hands_errors_to_the_caller():
    pixels = np.linspace(0, 1, 3000 * 1500, dtype=np.float32).reshape(1500, 3000)
    image = Image.open(io.BytesIO(base64.b64decode(QueryPreview(pixels).url().split(",", 1)[1])))
    assert image.size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)
    with pytest.raises(ValueError, match="non-empty"):
        QueryPreview(np.zeros((0, 4), np.float32)).url()


def test_region_matches_of_all_results_at_once_equal_one_by_one():
    from server.results import region_matches, region_matches_many

    rng = np.random.default_rng(3)
    query = rng.normal(size=(18, 16)).astype(np.float32)
    results = rng.normal(size=(5, 18, 16)).astype(np.float32)
    results[2, 4] = np.nan  # a missing region
    query_boxes = np.zeros((18, 4), np.float32)
    query_boxes[7] = np.nan
    boxes = [None, np.zeros((18, 4), np.float32), None, None, np.full((18, 4), np.nan, np.float32)]
    many = region_matches_many(query, results, query_boxes, boxes)
    assert many == [region_matches(query, results[i], query_boxes, boxes[i]) for i in range(5)]
    assert many[4] == [] and all(m["index"] not in (7,) for row in many for m in row)
    assert region_matches_many(None, results, None, boxes) == [[]] * 5


def test_result_tiles_link_each_result_by_its_own_id(own_app):
    app, _ = own_app
    svc = app.extensions["chextriev"]
    query = int(svc.catalog.index.ids[0])
    results = app.test_client().post(f"/api/v1/search/by-id/{query}", data={"k": "3"}).get_json()["results"]
    for tile in results:
        assert tile["thumbnail_url"] == f"/api/v1/images/{tile['id']}/thumbnail"
        assert tile["preview_url"] == f"/api/v1/images/{tile['id']}/preview"
        assert tile["image_url"] == f"/api/v1/images/{tile['id']}"
