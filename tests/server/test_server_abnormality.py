"""An abnormality model (class list ``abnormal``: any finding vs none) behind the server: the
query, every result and the image detail say ``abnormal: p``, with its threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from server_helpers import run_subcommand

from server import create_app
from server.results import abnormality


def test_abnormality_entry_only_for_the_abnormality_model():
    entry = abnormality(np.array([0.8349], np.float32), ("abnormal",), np.array([0.4], np.float32))
    assert entry == {"probability": 0.8349, "abnormal": True, "threshold": 0.4, "label": "abnormal: 0.83"}
    assert abnormality(np.array([0.2]), ("abnormal",), 0.5)["abnormal"] is False
    assert abnormality(np.array([0.8, 0.1]), ("effusion", "mass"), 0.5) is None
    assert abnormality(None, ("abnormal",)) is None and abnormality(np.array([np.nan]), ("abnormal",)) is None


def build_abnormality_index(tiny_index, root):
    """The server tests' archive indexed with an abnormality model (tiny resnet50, class list
    abnormal): ``tiny_index`` with that checkpoint, index folder and catalog."""
    from dataclasses import replace

    from chextriev.training.fit import train
    from indexer import cli as index_cli

    result = train(tiny_index.archive, root / "model", read_options={"class_list": "abnormal"}, variant="resnet50",
                   preset="tiny", max_epochs=1, progress=False, cache_dir=root / "cache")
    index_dir = root / "index"
    assert run_subcommand(index_cli, ["index", "--data", str(tiny_index.archive), "--checkpoint", str(result.best),
                                      "--index-dir", str(index_dir), "--workers", "0", "--device", "cpu",
                                      "--no-progress"]) == 0
    return replace(tiny_index, checkpoint=result.best, index_dir=index_dir,
                   db_url=f"sqlite:///{index_dir / 'catalog.sqlite'}")


@pytest.fixture(scope="module")
def abnormality_index(tiny_index, tmp_path_factory):
    return build_abnormality_index(tiny_index, tmp_path_factory.mktemp("abnormality"))


@pytest.fixture(scope="module")
def abnormality_app(abnormality_index):
    app = create_app(abnormality_index.config(LOAD="sync"))
    assert app.extensions["chextriev"].ready, app.extensions["chextriev"].error
    return app


def test_server_shows_abnormal_p(abnormality_app, query_png):
    client = abnormality_app.test_client()
    service = abnormality_app.extensions["chextriev"]
    assert service.class_names == ("abnormal",)
    threshold = float(service.finding_thresholds[0])
    response = client.post("/api/v1/search", data={"image": (io.BytesIO(query_png.read_bytes()), "q.png"), "k": "3"},
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    query = response.json["query"]
    p = query["findings"][0]["probability"]
    assert query["findings"][0]["name"] == "abnormal"
    assert query["abnormality"] == {"probability": p, "abnormal": p >= threshold, "threshold": round(threshold, 4),
                                    "label": f"abnormal: {p:.2f}"}
    results = response.json["results"]
    assert len(results) == 3 and all(r["abnormality"]["label"].startswith("abnormal: ") for r in results)
    detail = client.get(f"/api/v1/images/{results[0]['id']}").json
    assert detail["abnormality"] == results[0]["abnormality"]
    assert detail["abnormality"]["probability"] == detail["predicted_findings"][0]["probability"]


def test_other_models_have_no_abnormality(client, query_png):
    response = client.post("/api/v1/search", data={"image": (io.BytesIO(query_png.read_bytes()), "q.png"), "k": "2"},
                           content_type="multipart/form-data")
    assert response.json["query"]["abnormality"] is None
    assert all(r["abnormality"] is None for r in response.json["results"])

