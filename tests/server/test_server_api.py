"""Every endpoint and every error of the API, through Flask's test client, against a real tiny
index (tests/server/conftest.py): searches, images, thumbnails, heatmaps, readiness, auth."""

from __future__ import annotations

import io
import logging
import threading

import numpy as np
import pytest
from PIL import Image

from chextriev.vocab import REGIONS
from server import create_app

BOX_SOURCES = {"given", "detector", "atlas", "detector+atlas"}


def _upload(path, name="query.png", **fields):
    return {"image": (io.BytesIO(path.read_bytes() if hasattr(path, "read_bytes") else path), name), **fields}


def _png_size(data: bytes, format: str = "PNG") -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == format
        return image.size


# ---------------------------------------------------------------------------- probes and schema
def test_health_ready_and_openapi(client, app, tiny_index):
    assert client.get("/api/v1/healthz").json == {"status": "ok"}
    assert client.get("/healthz").status_code == 200
    ready = client.get("/api/v1/readyz")
    assert ready.status_code == 200
    body = ready.json
    service = app.extensions["chextriev"]
    assert body["ready"] is True and body["index_size"] == service.catalog.size > 0
    assert body["checkpoint_id"] == service.model.checkpoint_id == service.catalog.checkpoint_id
    assert body["index_build_id"] == service.catalog.build_id
    assert client.get("/readyz").json == {"ready": True}
    spec = client.get("/api/v1/openapi.json").json
    assert {"/search", "/search/by-id/{image_id}", "/images/{image_id}/heatmap", "/readyz"} <= set(spec["paths"])


def test_not_ready_until_loaded(tiny_index):
    app = create_app(tiny_index.config(LOAD="manual"))
    client = app.test_client()
    assert client.get("/api/v1/readyz").status_code == 503
    assert client.get("/readyz").status_code == 503
    for response in (client.post("/api/v1/search/by-id/1"), client.get("/api/v1/images/1"),
                     client.get("/api/v1/images/1/thumbnail"),
                     client.post("/api/v1/search", data={"image": (io.BytesIO(b"x"), "q.png")})):
        assert response.status_code == 503 and response.json["error"]["code"] == "not_ready"
    app.extensions["chextriev"].load()
    assert client.get("/api/v1/readyz").status_code == 200
    assert client.post("/api/v1/search/by-id/1", data={"k": "2"}).status_code == 200


def test_background_load_becomes_ready(tiny_index):
    app = create_app(tiny_index.config())  # LOAD=background, the default
    service = app.extensions["chextriev"]
    for thread in [t for t in threading.enumerate() if t.name == "chextriev-load"]:
        thread.join(timeout=60)
    assert service.ready and app.test_client().get("/api/v1/readyz").status_code == 200


def test_loading_failure_is_reported(tiny_index, tmp_path):
    app = create_app(tiny_index.config(LOAD="sync", CHECKPOINT=str(tmp_path / "missing.ckpt")))
    body = app.test_client().get("/api/v1/readyz")
    assert body.status_code == 503 and body.json["state"] == "failed" and "missing.ckpt" in body.json["error"]


# ---------------------------------------------------------------------------- upload search
def test_upload_search_returns_findings_boxes_and_ranked_results(client, app, query_png):
    response = client.post("/api/v1/search", data=_upload(query_png, k="5"), content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    body = response.json
    class_names = app.extensions["chextriev"].model.class_names
    query = body["query"]
    assert query["source"] == "upload" and query["format"] == "png"
    assert [f["name"] for f in query["findings"]] and {f["name"] for f in query["findings"]} == set(class_names)
    probabilities = [f["probability"] for f in query["findings"]]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)
    assert [b["region"] for b in query["boxes"]] == list(REGIONS)
    assert query["box_source"] in BOX_SOURCES
    assert query["preview_url"].startswith("data:image/jpeg;base64,") and query["known_findings"] is None
    import base64

    preview = base64.b64decode(query["preview_url"].split(",", 1)[1])
    assert preview[:3] == b"\xff\xd8\xff" and len(preview) > 1000  # a JPEG, not an empty image
    results = body["results"]
    assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    similarities = [r["similarity"] for r in results]
    assert similarities == sorted(similarities, reverse=True)
    # The query is itself archived: it comes first. Its archived copy was indexed with the
    # archive's true region boxes, the upload's come from the detector/atlas: cosine near 1.
    assert results[0]["image_id"] == query_png.stem and results[0]["similarity"] > 0.98
    for result in results:
        assert result["thumbnail_url"] == f"/api/v1/images/{result['id']}/thumbnail"
        assert result["preview_url"] == f"/api/v1/images/{result['id']}/preview"
        assert result["patient"] and result["study"]
        assert isinstance(result["known_findings"], list)
        assert set(result["shared_findings"]) <= set(result["known_findings"]) & set(query["predicted_findings"])
        assert 1 <= len(result["matched_regions"]) <= 3
        assert all(m["region"] == REGIONS[m["index"]] for m in result["matched_regions"])
        sims = [m["similarity"] for m in result["matched_regions"]]
        assert sims == sorted(sims, reverse=True)


def test_upload_search_accepts_jpeg_and_dicom_by_content(client, query_png, query_dicom):
    buffer = io.BytesIO()
    Image.open(query_png).convert("L").save(buffer, "JPEG", quality=95)
    response = client.post("/api/v1/search", data=_upload(buffer.getvalue(), name="no-extension", k="3"))
    assert response.status_code == 200 and response.json["query"]["format"] == "jpeg"
    assert len(response.json["results"]) == 3
    if query_dicom is None:
        pytest.skip("the tiny synthetic archive holds no DICOM file")
    response = client.post("/api/v1/search", data=_upload(query_dicom, name="image.png", k="3"))
    assert response.status_code == 200 and response.json["query"]["format"] == "dicom"


def test_upload_exclude_same_patient(client, app, query_dicom):
    if query_dicom is None:
        pytest.skip("the tiny synthetic archive holds no DICOM file")
    service = app.extensions["chextriev"]
    size = service.catalog.size
    plain = client.post("/api/v1/search", data=_upload(query_dicom, k=str(size))).json
    patient = plain["results"][0]["patient"]
    assert plain["results"][0]["similarity"] > 0.98  # its archived copy (indexed with true boxes)
    excluded = client.post("/api/v1/search", data=_upload(query_dicom, k=str(size), exclude_same_patient="1")).json
    assert excluded["exclude_same_patient"] is True
    assert patient not in {r["patient"] for r in excluded["results"]}
    assert len(excluded["results"]) == size - sum(r["patient"] == patient for r in plain["results"])
    png = client.post("/api/v1/search", data=_upload(grey_png(), k="2", exclude_same_patient="1")).json
    assert png["notes"] and "names no patient" in png["notes"][0]


def grey_png() -> bytes:
    """A tiny grey PNG without any patient tag."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_known_and_predicted_findings_come_apart(client, app):
    service = app.extensions["chextriev"]
    class_names = service.class_names
    target = int(service.catalog.index.ids[0])
    body = client.post(f"/api/v1/search/by-id/{target}", data={"k": "100"}).json
    rows = {row["id"]: row for row in service.images([r["id"] for r in body["results"]])}
    thresholds = dict(zip(class_names, service.finding_thresholds))  # the checkpoint's (0.5 without)
    for result in body["results"]:
        row = rows[result["id"]]
        assert result["known_findings"] == [name for name, flag in row["known_findings"].items() if flag]
        expected = sorted((name for name in class_names if row["probabilities"][name] >= thresholds[name]),
                          key=lambda name: -row["probabilities"][name])
        assert result["predicted_findings"] == expected
        assert "finding_filter" not in result
    assert "finding_filter" not in body
    query = body["query"]
    assert query["known_findings"] is not None and query["preview_url"] == f"/api/v1/images/{target}/preview"
    probabilities = {f["name"]: f["probability"] for f in query["findings"]}
    assert query["predicted_findings"] == [f["name"] for f in query["findings"] if f["predicted"]]
    assert all(probabilities[name] >= thresholds[name] - 1e-4 for name in query["predicted_findings"])


def test_predicted_findings_use_the_checkpoint_thresholds(client, app, monkeypatch):
    """Each class predicted at its own threshold chosen on validation (0.5 where there is none)."""
    service = app.extensions["chextriev"]
    class_names = service.class_names
    assert service.model.thresholds is not None and len(service.model.thresholds) == len(class_names)
    forced = np.full(len(class_names), 1.5, np.float32)  # nothing reaches it...
    forced[1] = 0.0  # ...but every image has class 1
    forced[2] = np.nan  # no threshold: 0.5
    monkeypatch.setattr(service.model, "thresholds", forced)
    target = int(service.catalog.index.ids[0])
    body = client.post(f"/api/v1/search/by-id/{target}", data={"k": "5"}).json
    rows = {row["id"]: row for row in service.images([r["id"] for r in body["results"]])}
    for result in body["results"]:
        at_half = rows[result["id"]]["probabilities"][class_names[2]] >= 0.5
        assert set(result["predicted_findings"]) == {class_names[1], *([class_names[2]] if at_half else [])}
    query = body["query"]
    assert class_names[1] in query["predicted_findings"] and class_names[0] not in query["predicted_findings"]
    detail = client.get(f"/api/v1/images/{target}").json
    assert not any(f["predicted"] for f in detail["predicted_findings"] if f["name"] == class_names[0])
    assert any(f["predicted"] for f in detail["predicted_findings"] if f["name"] == class_names[1])


def test_the_finding_filter_says_whether_it_used_the_label_or_the_prediction(client, app):
    service = app.extensions["chextriev"]
    rows = service.images([int(i) for i in service.catalog.index.ids])
    finding = next(name for name in service.class_names if any((row["known_findings"] or {}).get(name) for row in rows))
    body = client.post(f"/api/v1/search/by-id/{rows[0]['id']}", data={"k": "100", "finding": finding}).json
    summary = body["finding_filter"]
    assert summary["finding"] == finding and "known label" in summary["rule"]
    assert summary["matched_on"]["known"] + summary["matched_on"]["predicted"] == len(body["results"]) > 0
    for result in body["results"]:
        assert result["finding_filter"] == {"finding": finding, "matched_on": "known"}  # every image has labels
        assert finding in result["known_findings"]


def test_large_upload_gets_a_preview_at_viewing_size(client):
    """A 2048 px query: its preview (what the viewer draws) is 1024 px on the long side."""
    import base64

    pixels = np.add.outer(np.linspace(0, 255, 2048), np.linspace(0, 255, 1536)) / 2  # 2048 rows x 1536
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    body = client.post("/api/v1/search", data=_upload(buffer.getvalue(), k="2")).json
    query = body["query"]
    assert (query["width"], query["height"]) == (1536, 2048)
    preview = base64.b64decode(query["preview_url"].split(",", 1)[1])
    assert _png_size(preview, "JPEG") == (768, 1024)  # encoded as the archive's previews


# ---------------------------------------------------------------------------- by-id search
def test_search_by_id_excludes_itself_and_honours_options(client, app):
    service = app.extensions["chextriev"]
    ids = [int(i) for i in service.catalog.index.ids]
    target = ids[len(ids) // 2]
    body = client.post(f"/api/v1/search/by-id/{target}", data={"k": "4"}).json
    assert body["query"]["source"] == "archive" and body["query"]["id"] == target
    assert len(body["results"]) == 4 and target not in [r["id"] for r in body["results"]]
    assert body["query"]["box_source"] in BOX_SOURCES
    # JSON body and query string work as well as a form
    assert len(client.post(f"/api/v1/search/by-id/{target}", json={"k": 2}).json["results"]) == 2
    assert len(client.post(f"/api/v1/search/by-id/{target}?k=3").json["results"]) == 3
    # same patient excluded
    patient = service.images([target])[0]["patient"]
    everything = client.post(f"/api/v1/search/by-id/{target}", data={"k": "100"}).json["results"]
    others = client.post(f"/api/v1/search/by-id/{target}", data={"k": "100", "exclude_same_patient": "1"}).json
    assert patient not in {r["patient"] for r in others["results"]}
    assert len(others["results"]) == len([r for r in everything if r["patient"] != patient])


def test_search_filters(client, app):
    service = app.extensions["chextriev"]
    rows = service.images([int(i) for i in service.catalog.index.ids])
    target = rows[0]["id"]
    views = {row["view"] for row in rows if row["view"]}
    for view in views:
        results = client.post(f"/api/v1/search/by-id/{target}", data={"k": "100", "view": view}).json["results"]
        expected = [row["id"] for row in rows if row["view"] == view and row["id"] != target]
        assert sorted(r["id"] for r in results) == sorted(expected)
    finding = next(name for name in service.class_names
                   if any((row["known_findings"] or {}).get(name) for row in rows))
    results = client.post(f"/api/v1/search/by-id/{target}", data={"k": "100", "finding": finding}).json["results"]
    assert results and all(finding in r["known_findings"] for r in results)


# ---------------------------------------------------------------------------- images
def test_image_detail_thumbnail_and_heatmaps(client, app, query_png):
    service = app.extensions["chextriev"]
    image_id = int(service.catalog.index.ids[0])
    detail = client.get(f"/api/v1/images/{image_id}").json
    assert detail["id"] == image_id and len(detail["boxes"]) == 18 and detail["box_source"] in BOX_SOURCES
    assert len(detail["region_probabilities"]) == 18 and len(detail["predicted_findings"]) == len(service.class_names)
    assert "source_path" not in detail  # archive paths can carry identifiers
    thumbnail = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"  # as stored, encoded once
    assert max(_png_size(thumbnail.data, "JPEG")) == 128
    assert thumbnail.data == app.extensions["chextriev"].catalog.thumbnail_bytes(image_id)[0]
    width, height = detail["width"], detail["height"]  # 256 px: the preview is the full image
    finding = service.class_names[0]
    heat = client.get(f"/api/v1/images/{image_id}/heatmap", query_string={"finding": finding})
    assert heat.status_code == 200 and heat.mimetype == "image/png" and _png_size(heat.data) == (width, height)
    assert heat.headers["X-Chextriev-Preview"] == "preview"  # computed on the preview
    upload_heat = client.post("/api/v1/heatmap", data=_upload(query_png, finding=finding))
    assert upload_heat.status_code == 200 and _png_size(upload_heat.data) == Image.open(query_png).size
    assert detail["preview_url"] == f"/api/v1/images/{image_id}/preview"


def test_preview_is_the_archived_image_at_preview_size(client, app):
    """/images/<id>/preview: the stored 8-bit JPEG made at ingest from the decoded pixels (here
    the whole 256 px image: previews are never enlarged), cached by ETag; the viewer's URL."""
    from chextriev.io.images import load_image

    service = app.extensions["chextriev"]
    image_id = int(service.catalog.index.ids[2])
    detail = client.get(f"/api/v1/images/{image_id}").json
    assert detail["preview_url"] == f"/api/v1/images/{image_id}/preview"
    assert detail["preview_source"] == "preview"
    response = client.get(detail["preview_url"])
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["X-Chextriev-Preview"] == "preview"
    assert "max-age" in response.headers["Cache-Control"] and response.headers["ETag"]
    again = client.get(detail["preview_url"], headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and not again.data
    with Image.open(io.BytesIO(response.data)) as image:
        assert image.format == "JPEG" and image.mode == "L"
        assert image.size == (detail["width"], detail["height"])
        shown = np.asarray(image, dtype=np.float32) / 255
    original = load_image(service.catalog.images([image_id])[0]["source_path"])
    assert np.abs(shown - original).mean() < 3 / 255  # the archived pixels, 8-bit JPEG


def test_an_index_without_previews_serves_thumbnails_and_says_so(tiny_index, tmp_path):
    """An index built before previews existed (no previews/ folder): the preview route serves
    the thumbnail (logged once), the header and the image detail say so; heatmaps use it too."""
    import dataclasses
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(tiny_index.index_dir, copy, ignore=shutil.ignore_patterns("previews"))
    old = dataclasses.replace(tiny_index, index_dir=copy, db_url=f"sqlite:///{copy / 'catalog.sqlite'}")
    app = create_app(old.config(LOAD="sync"))
    client = app.test_client()
    image_id = int(app.extensions["chextriev"].catalog.index.ids[0])
    response = client.get(f"/api/v1/images/{image_id}/preview")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"  # the thumbnail as stored
    assert response.headers["X-Chextriev-Preview"].startswith("thumbnail")
    assert max(_png_size(response.data, "JPEG")) == 128
    assert client.get(f"/api/v1/images/{image_id}").json["preview_source"] == "thumbnail"
    heat = client.get(f"/api/v1/images/{image_id}/heatmap", query_string={"finding": app.extensions[
        "chextriev"].class_names[0]})
    assert heat.status_code == 200 and max(_png_size(heat.data)) == 128
    assert heat.headers["X-Chextriev-Preview"].startswith("thumbnail")
    assert not (copy / "previews").exists()


def test_heatmap_layer_composited_on_the_image_is_the_overlay(client, app):
    """style=layer: a transparent RGBA layer that, drawn over the grey image (as the viewer does,
    after its own window/level), gives exactly the overlay PNG."""
    service = app.extensions["chextriev"]
    image_id = int(service.catalog.index.ids[1])
    finding = service.class_names[1]
    query = {"finding": finding}
    overlay = client.get(f"/api/v1/images/{image_id}/heatmap", query_string=query)
    layer = client.get(f"/api/v1/images/{image_id}/heatmap", query_string={**query, "style": "layer"})
    assert layer.status_code == 200 and layer.mimetype == "image/png"
    with Image.open(io.BytesIO(layer.data)) as image:
        assert image.mode == "RGBA"
        rgba = np.asarray(image, dtype=np.float64) / 255
    grey = np.asarray(Image.open(io.BytesIO(client.get(f"/api/v1/images/{image_id}/preview").data)).convert("L"),
                      dtype=np.float64)[..., None] / 255
    composite = rgba[..., :3] * rgba[..., 3:] + grey * (1 - rgba[..., 3:])
    expected = np.asarray(Image.open(io.BytesIO(overlay.data)).convert("RGB"), dtype=np.float64) / 255
    assert composite.shape == expected.shape
    assert np.abs(composite - expected).max() <= 3 / 255
    assert rgba[..., 3].max() > 0.05  # some heat shows (not an empty layer)
    bad = client.get(f"/api/v1/images/{image_id}/heatmap", query_string={**query, "style": "sepia"})
    assert bad.status_code == 400 and "overlay, layer" in bad.json["error"]["message"]


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("k", ["0", "101", "ten", "-1"])
def test_bad_k_is_400(client, query_png, k):
    for response in (client.post("/api/v1/search", data=_upload(query_png, k=k)),
                     client.post("/api/v1/search/by-id/1", data={"k": k})):
        assert response.status_code == 400 and response.json["error"]["code"] == "bad_parameter"
        assert "k must be" in response.json["error"]["message"]


def test_unreadable_upload_is_400_saying_why(client):
    response = client.post("/api/v1/search", data={"image": (io.BytesIO(b"GIF89a not really"), "x.png")})
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_image"
    assert "PNG, JPEG or DICOM" in response.json["error"]["message"]
    truncated = grey_png()[:50]
    response = client.post("/api/v1/search", data={"image": (io.BytesIO(truncated), "x.png")})
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_image"
    response = client.post("/api/v1/search", data={"k": "3"})
    assert response.status_code == 400 and response.json["error"]["code"] == "missing_image"


def test_bad_filters_and_findings_are_400(client):
    assert client.post("/api/v1/search/by-id/1", data={"sex": "X"}).status_code == 400
    response = client.post("/api/v1/search/by-id/1", data={"finding": "dragon"})
    assert response.status_code == 400 and "valid: " in response.json["error"]["message"]
    response = client.get("/api/v1/images/1/heatmap")
    assert response.status_code == 400 and "finding missing" in response.json["error"]["message"]
    assert client.get("/api/v1/images/1/heatmap?finding=dragon").status_code == 400


def test_upload_limit_is_413_json(app, query_png):
    small = create_app({"SERVICE": app.extensions["chextriev"], "MAX_CONTENT_LENGTH": 1024, "LOAD": "manual"})
    response = small.test_client().post("/api/v1/search", data=_upload(query_png))
    assert len(query_png.read_bytes()) > 1024
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


def test_decompression_bomb_is_413(client):
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")  # 81 M pixels, a few hundred kB
    response = client.post("/api/v1/search", data={"image": (io.BytesIO(buffer.getvalue()), "bomb.png")})
    assert response.status_code == 413 and response.json["error"]["code"] == "image_too_large"


def test_unknown_ids_are_404(client):
    for response in (client.post("/api/v1/search/by-id/987654"), client.get("/api/v1/images/987654"),
                     client.get("/api/v1/images/987654/thumbnail"),
                     client.get("/api/v1/images/987654/preview"),
                     client.get("/api/v1/images/987654/heatmap?finding=pneumothorax")):
        assert response.status_code == 404 and response.json["error"]["code"] == "unknown_image"
    assert client.get("/api/v1/images/abc").status_code == 404


def test_no_file_is_served_by_a_request_path(client):
    for path in ("/static/../__init__.py", "/static/%2e%2e/__init__.py", "/api/v1/images/../../etc/passwd",
                 "/static/../../ARCHITECTURE.md", "/images/1/thumbnail?path=/etc/passwd"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"create_app" not in response.data and b"root:" not in response.data


def test_every_api_route_needs_the_token_when_set(token_client, token, app):
    image_id = int(app.extensions["chextriev"].catalog.index.ids[0])
    routes = [("get", "/api/v1/healthz"), ("get", "/api/v1/readyz"), ("get", "/api/v1/openapi.json"),
              ("post", "/api/v1/search"), ("post", f"/api/v1/search/by-id/{image_id}"),
              ("get", f"/api/v1/images/{image_id}"), ("get", f"/api/v1/images/{image_id}/thumbnail"),
              ("get", f"/api/v1/images/{image_id}/preview"),
              ("get", f"/api/v1/images/{image_id}/heatmap?finding=pneumothorax"), ("post", "/api/v1/heatmap")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            response = getattr(token_client, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    good = {"Authorization": f"Bearer {token}"}
    assert token_client.get("/api/v1/readyz", headers=good).status_code == 200
    assert token_client.post(f"/api/v1/search/by-id/{image_id}", headers=good, data={"k": "2"}).status_code == 200
    page = token_client.get("/")  # the page itself is public; it asks for the token
    assert page.status_code == 200 and b'data-needs-token="true"' in page.data
    assert token_client.get("/healthz").status_code == 200


def test_logs_hold_ids_and_counts_not_patients(client, app, caplog, query_png):
    service = app.extensions["chextriev"]
    image_id = int(service.catalog.index.ids[0])
    row = service.images([image_id])[0]
    with caplog.at_level(logging.DEBUG):
        client.post(f"/api/v1/search/by-id/{image_id}", data={"k": "3", "exclude_same_patient": "1"})
        client.post("/api/v1/search", data=_upload(query_png, name="Doe_John_1957.png", k="3"))
    text = caplog.text
    assert f"search by id {image_id}" in text and "search upload" in text
    assert row["patient"] not in text and row["study"] not in text
    assert "Doe_John" not in text and query_png.stem not in text


def test_page_renders(client):
    page = client.get("/")
    assert page.status_code == 200 and b'id="drop"' in page.data and b'data-api="/api/v1"' in page.data
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
