"""Server building blocks that need no index: config safety, validation, region matching,
OpenAPI coverage, and the JSON error shape before anything is loaded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chextriev.errors import UnknownNameError
from chextriev.vocab import IMAGENOME_FINDINGS, REGIONS
from server import create_app
from server.config import ConfigError, check_bind_safety, is_loopback, resolve_config
from server.errors import ApiError
from server.results import as_boxes, as_probabilities, findings_list, known_findings, region_matches
from server.validation import decode_upload, parse_bool, parse_filters, parse_k


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 255, width * height, dtype=np.uint8).reshape(height, width)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                            ("example.org", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_non_loopback_bind_needs_a_token():
    with pytest.raises(ConfigError, match="token"):
        check_bind_safety("0.0.0.0", None)
    with pytest.raises(ConfigError, match="plain HTTP on 0.0.0.0"):  # a token alone is not enough
        check_bind_safety("0.0.0.0", "a-long-random-token-value")
    check_bind_safety("0.0.0.0", "a-long-random-token-value", tls=True)
    check_bind_safety("0.0.0.0", "a-long-random-token-value", proxy=("10.0.0.5/32",))
    with pytest.raises(ConfigError):
        create_app({"HOST": "0.0.0.0", "LOAD": "manual"})


def test_config_reads_environment_and_refuses_bad_values():
    config = resolve_config({}, environ={"CHEXTRIEV_CHECKPOINT": "/x.ckpt", "CHEXTRIEV_MAX_PIXELS": "1000"})
    assert config["CHECKPOINT"] == "/x.ckpt" and config["MAX_PIXELS"] == 1000
    assert config["MAX_CONTENT_LENGTH"] == 64 * 1024 * 1024
    assert len(config["SECRET_KEY"]) >= 32 and config["SECRET_KEY"] != resolve_config({}, environ={})["SECRET_KEY"]
    with pytest.raises(ConfigError, match="MAX_PIXELS"):
        resolve_config({"MAX_PIXELS": "lots"}, environ={})
    with pytest.raises(UnknownNameError, match="background"):
        resolve_config({"LOAD": "eager"}, environ={})


@pytest.mark.parametrize("value, expected", [(None, 10), ("1", 1), ("100", 100), (" 7 ", 7)])
def test_parse_k_accepts_1_to_100(value, expected):
    assert parse_k(value) == expected


@pytest.mark.parametrize("value", ["0", "101", "-3", "ten", "2.5", ""])
def test_parse_k_refuses_the_rest(value):
    with pytest.raises(ApiError) as caught:
        parse_k(value)
    assert caught.value.status == 400 and "k must be" in caught.value.message


def test_parse_bool_and_filters():
    assert parse_bool("x", "true") and not parse_bool("x", "0") and not parse_bool("x", None)
    with pytest.raises(ApiError):
        parse_bool("x", "maybe")
    filters = parse_filters({"view": "pa", "sex": "f", "age_min": "20", "age_max": "80",
                             "finding": "pneumothorax"}, IMAGENOME_FINDINGS)
    assert filters == {"view": "PA", "sex": "F", "age_min": 20, "age_max": 80, "finding": "pneumothorax"}
    assert parse_filters({"view": "", "finding": ""}, IMAGENOME_FINDINGS) == {}
    for bad in ({"sex": "x"}, {"age_min": "old"}, {"age_min": "90", "age_max": "10"}, {"age_max": "400"}):
        with pytest.raises(ApiError):
            parse_filters(bad, IMAGENOME_FINDINGS)
    with pytest.raises(ApiError, match="valid: lung opacity"):
        parse_filters({"finding": "broken heart"}, IMAGENOME_FINDINGS)


def test_decode_upload_checks_content_not_names():
    decoded = decode_upload(_png(40, 30), max_pixels=10_000)
    assert decoded.pixels.shape == (30, 40) and decoded.pixels.dtype == np.float32 and decoded.format == "png"
    with pytest.raises(ApiError) as caught:
        decode_upload(b"%PDF-1.4 definitely not an image", max_pixels=10_000)
    assert caught.value.status == 400 and "PNG, JPEG or DICOM" in caught.value.message
    with pytest.raises(ApiError) as caught:
        decode_upload(_png(40, 30)[:60], max_pixels=10_000)  # truncated PNG
    assert caught.value.status == 400
    with pytest.raises(ApiError) as caught:
        decode_upload(b"", max_pixels=10_000)
    assert caught.value.status == 400 and "empty" in caught.value.message


def test_decompression_bomb_is_refused_from_the_header():
    # A 6000 x 6000 all-black PNG is a few kB on the wire but 36 M pixels once decoded.
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, "PNG", optimize=True)
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(ApiError) as caught:
        decode_upload(buffer.getvalue(), max_pixels=1_000_000)
    assert caught.value.status == 413 and "36000000 pixels" in caught.value.message


def test_region_matches_ranks_regions_and_skips_missing_ones():
    rng = np.random.default_rng(0)
    query = rng.normal(size=(18, 8)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    result = -query.copy()
    result[[3, 16, 9]] = query[[3, 16, 9]]  # identical in three regions
    result[9] = 0.9 * query[9] + 0.1 * query[0]
    result /= np.linalg.norm(result, axis=1, keepdims=True)
    matches = region_matches(query, result)
    assert [m["index"] for m in matches][:2] in ([3, 16], [16, 3]) and matches[2]["index"] == 9
    assert matches[0]["region"] == REGIONS[matches[0]["index"]] and matches[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    boxes = np.zeros((18, 4), np.float32)
    boxes[3] = np.nan  # region 3 missing in the result: never reported
    assert 3 not in [m["index"] for m in region_matches(query, result, result_boxes=boxes)]
    assert region_matches(None, result) == []


def test_stored_rows_convert_to_arrays():
    rows = [None if i == 2 else [i, i, i + 5, i + 5] for i in range(18)]
    boxes = as_boxes(rows)
    assert boxes.shape == (18, 4) and np.isnan(boxes[2]).all() and boxes[4, 2] == 9
    probabilities = as_probabilities({"pneumothorax": 0.9, "lung opacity": 0.1}, IMAGENOME_FINDINGS)
    assert probabilities[0] == pytest.approx(0.1) and probabilities[5] == pytest.approx(0.9)
    assert findings_list(np.nan_to_num(probabilities), IMAGENOME_FINDINGS)[0] == {
        "name": "pneumothorax", "probability": 0.9, "predicted": True}
    assert known_findings({"known_findings": {"atelectasis": 1, "pneumonia": 0}}) == ["atelectasis"]
    assert known_findings({"known_findings": None}) is None


def test_not_ready_app_answers_503_json_and_openapi_lists_every_route():
    app = create_app({"LOAD": "manual"})
    client = app.test_client()
    assert client.get("/api/v1/healthz").json == {"status": "ok"}
    ready = client.get("/api/v1/readyz")
    assert ready.status_code == 503 and ready.json["ready"] is False
    response = client.post("/api/v1/search/by-id/1")
    assert response.status_code == 503 and response.json["error"]["code"] == "not_ready"
    assert response.headers["Retry-After"] == "5"
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    api_rules = {rule.rule.replace("/api/v1", "").replace("<int:image_id>", "{image_id}")
                 for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/v1")}
    assert api_rules == set(spec["paths"])
    app.extensions["chextriev"].load()  # nothing configured: loading fails and says what is missing
    failed = client.get("/api/v1/readyz")
    assert failed.json["state"] == "failed" and "INDEX_DIR" in failed.json["error"]
    assert failed.headers["Retry-After"] == str(failed.json["retry_after_s"]) and failed.json["retry_after_s"] >= 1
