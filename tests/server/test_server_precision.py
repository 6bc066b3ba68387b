"""The server's precision setting and the per-stage ``timing_ms`` of a search response."""

from __future__ import annotations

import pytest

from server import create_app
from server.config import resolve_config


def test_precision_setting_is_checked_and_defaults_to_auto():
    assert resolve_config({}, environ={})["PRECISION"] == "auto"
    assert resolve_config({}, environ={"CHEXTRIEV_PRECISION": "BF16"})["PRECISION"] == "bf16"
    from chextriev.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="auto, fp32, bf16"):
        resolve_config({"PRECISION": "fp16"}, environ={})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_upload_search_reports_every_stage(tiny_index, query_png, precision):
    app = create_app(tiny_index.config(LOAD="sync", PRECISION=precision))
    service = app.extensions["chextriev"]
    assert service.ready, service.error
    client = app.test_client()
    assert client.get("/api/v1/readyz").get_json()["precision"] == precision
    with open(query_png, "rb") as handle:
        response = client.post("/api/v1/search", data={"image": (handle, "q.png"), "k": "3"})
    assert response.status_code == 200, response.get_json()
    timing = response.get_json()["timing_ms"]
    assert {"decode", "wait", "boxes", "model", "embed", "search", "response", "total"} <= set(timing)
    assert all(value >= 0 for value in timing.values())
    stages = sum(timing[name] for name in ("decode", "embed", "search", "response"))
    assert stages <= timing["total"] + 1.0  # rounding of each stage to 0.1 ms
    assert timing["boxes"] + timing["model"] <= timing["embed"] + 0.5


def test_by_id_search_reports_search_and_response(app):
    client = app.test_client()
    timing = client.post("/api/v1/search/by-id/1", data={"k": "2"}).get_json()["timing_ms"]
    assert {"search", "response", "total"} <= set(timing)


def test_compile_setting_is_checked_and_defaults_to_on():
    assert resolve_config({}, environ={})["COMPILE"] == "on"
    assert resolve_config({}, environ={"CHEXTRIEV_COMPILE": "0"})["COMPILE"] == "off"
    assert resolve_config({}, environ={"CHEXTRIEV_COMPILE": "1"})["COMPILE"] == "on"
    from chextriev.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="off, on"):
        resolve_config({"COMPILE": "fast"}, environ={})


@pytest.mark.slow
def test_a_compiled_server_answers_as_the_eager_one(tiny_index, query_png):
    def search(compile_mode: str):
        app = create_app(tiny_index.config(LOAD="sync", PRECISION="fp32", COMPILE=compile_mode))
        client = app.test_client()
        ready = client.get("/api/v1/readyz").get_json()
        with open(query_png, "rb") as handle:
            response = client.post("/api/v1/search", data={"image": (handle, "q.png"), "k": "3"})
        assert response.status_code == 200, response.get_json()
        return ready, response.get_json()

    eager_ready, eager = search("off")
    compiled_ready, compiled = search("on")  # compiled while loading, before ready
    assert (eager_ready["compiled"], compiled_ready["compiled"]) == (False, True)
    assert [r["id"] for r in compiled["results"]] == [r["id"] for r in eager["results"]]
    for a, b in zip(compiled["results"], eager["results"]):
        assert a["similarity"] == pytest.approx(b["similarity"], abs=2e-4)
