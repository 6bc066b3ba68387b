"""The real NIH sample through the whole serving path: a model trained on synthetic data indexes
all 621 real images (615 `L` and 6 `RGBA` PNGs), and queries by id and by upload work on them."""

from __future__ import annotations

import pytest

from chextriev_cli.main import main as chextriev
from server import create_app


@pytest.fixture(scope="module")
def nih_index(nih_sample, tiny_index, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("nih-index")
    code = chextriev(["index", "--source", str(nih_sample / "images"),
                                      "--checkpoint", str(tiny_index.checkpoint), "--index-dir", str(index_dir),
                                      "--workers", "0", "--device", "cpu", "--no-progress"])
    assert code == 0
    return index_dir


@pytest.mark.slow
def test_every_nih_image_is_indexed_and_searchable(nih_sample, nih_index, tiny_index):
    app = create_app({"CHECKPOINT": str(tiny_index.checkpoint), "INDEX_DIR": str(nih_index),
                      "DB_URL": f"sqlite:///{nih_index / 'catalog.sqlite'}", "LOAD": "sync"})
    client = app.test_client()
    ready = client.get("/api/v1/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["index_size"] == len(list((nih_sample / "images").glob("*.png"))) == 621

    by_id = client.post("/api/v1/search/by-id/1", data={"k": "5"})
    assert by_id.status_code == 200, by_id.get_json()
    results = by_id.get_json()["results"]
    assert len(results) == 5 and all(r["id"] != 1 for r in results)
    assert client.get(f"/api/v1/images/{results[0]['id']}/thumbnail").status_code == 200

    rgba = next(p for p in sorted((nih_sample / "images").glob("*.png")) if _mode(p) == "RGBA")
    with open(rgba, "rb") as handle:
        upload = client.post("/api/v1/search", data={"image": (handle, rgba.name), "k": "3"},
                             content_type="multipart/form-data")
    assert upload.status_code == 200, upload.get_json()
    payload = upload.get_json()
    assert len(payload["results"]) == 3
    assert payload["results"][0]["similarity"] > 0.99  # the archived copy of the uploaded image


def _mode(path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode
