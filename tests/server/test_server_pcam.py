"""A classifier trained with ``--pooling pcam`` behind the server: its heatmaps are its own PCAM
probability maps (the map the localization table scores), not Grad-CAM, and say so."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from server_helpers import run_subcommand

from server import create_app
from server.services import HEAT_ALPHA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pcam_app(tiny_index, tmp_path_factory):
    from dataclasses import replace

    from chextriev.training.fit import train
    from indexer import cli as index_cli

    root = tmp_path_factory.mktemp("pcam")
    result = train(tiny_index.archive, root / "model", variant="resnet50", preset="tiny", max_epochs=1,
                   progress=False, cache_dir=root / "cache", model_overrides={"pooling": "pcam"})
    index_dir = root / "index"
    assert run_subcommand(index_cli, ["index", "--data", str(tiny_index.archive), "--checkpoint", str(result.best),
                                      "--index-dir", str(index_dir), "--workers", "0", "--device", "cpu",
                                      "--no-progress"]) == 0
    index = replace(tiny_index, checkpoint=result.best, index_dir=index_dir,
                    db_url=f"sqlite:///{index_dir / 'catalog.sqlite'}")
    app = create_app(index.config(LOAD="sync", PRECISION="fp32"))
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    return app


def _alpha(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


def test_archived_heatmap_is_the_models_pcam_map(pcam_app, query_png):
    from chextriev.localization.pcam import pcam_heatmap

    client = pcam_app.test_client()
    service = pcam_app.extensions["chextriev"]
    assert service.heatmap_method == "pcam"
    search = client.post("/api/v1/search", data={"image": (io.BytesIO(query_png.read_bytes()), "q.png"), "k": "1"},
                         content_type="multipart/form-data")
    image_id = search.json["results"][0]["id"]
    finding = service.class_names[0]
    response = client.get(f"/api/v1/images/{image_id}/heatmap", query_string={"finding": finding, "style": "layer"})
    assert response.status_code == 200, response.json
    assert response.headers["X-Chextriev-Heatmap-Method"] == "pcam"
    pixels, _ = service.archived_pixels(image_id)
    expected = pcam_heatmap(service.model, pixels, finding)
    # the layer's alpha is HEAT_ALPHA x heat, rounded to 8 bits
    np.testing.assert_allclose(_alpha(response.data), HEAT_ALPHA * expected, atol=1.5 / 255)


def test_upload_heatmap_says_pcam_and_other_models_say_gradcam(pcam_app, client, query_png):
    data = {"image": (io.BytesIO(query_png.read_bytes()), "q.png"), "finding": pcam_app.extensions["chextriev"].class_names[0]}
    response = pcam_app.test_client().post("/api/v1/heatmap", data=data, content_type="multipart/form-data")
    assert response.status_code == 200 and response.headers["X-Chextriev-Heatmap-Method"] == "pcam"
    finding = client.application.extensions["chextriev"].class_names[0]
    other = client.post("/api/v1/heatmap", data={"image": (io.BytesIO(query_png.read_bytes()), "q.png"), "finding": finding},
                        content_type="multipart/form-data")
    assert other.status_code == 200 and other.headers["X-Chextriev-Heatmap-Method"] == "gradcam"
