"""Search by text, end to end over HTTP: conftest's ``day_one`` no-label checkpoint of a tiny
BiomedCLIP-layout CLIP (open_clip's own format) indexes 10 real NIH radiographs; ``chextriev
serve`` (fp32) answers ``POST /api/v1/search/text`` with the archive ranked exactly as open_clip
itself scores image against text, and each result's ``matched_regions`` the regions the text
points at (cosine of open_clip's text embedding to the stored region embeddings), boxed with the
result's stored boxes. The 4xx cases; a model without a text tower answers 409 with the reason
(``/readyz`` says it too); the text is never in the log or the audit log; the viewer's text box
in a real browser."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from server_helpers import (
    REPO_ROOT,
    run_subcommand,
    serve_until_ready,
    stop_server,
    viewer_page,
    wait_for,
)

TEXTS = ["left pleural effusion", "enlarged heart", "no acute finding"]
#: Pixels of a canvas that are clearly coloured (the region boxes; the radiograph is grey).
COLOURED = """canvas => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 60) coloured += 1;
  }
  return coloured;
}"""
#: What a user might type; must appear in no log line and no audit line.
SECRET = "Jane Roe 1961 right lower lobe consolidation"


@pytest.fixture(scope="module")
def text_server(day_one, tmp_path_factory):
    """``python -m server.cli`` (``chextriev serve``) on the day-one index alone (the bundle names
    the checkpoint), fp32, with an audit log."""
    folder = tmp_path_factory.mktemp("text-server")
    log_path, audit = folder / "server.log", folder / "audit.log"
    base, process = serve_until_ready(["--index-dir", str(day_one["index_dir"]), "--precision", "fp32",
                                       "--audit-log", str(audit)], log_path)
    yield {"base": base, "log": log_path, "audit": audit}
    stop_server(process)


@pytest.fixture(scope="module")
def library(day_one):
    """open_clip's own model (built by open_clip from the reference folder) and tokenizer:
    ``scores[text][image_id]`` its image-text cosine for every archived image, ``texts[text]``
    its L2-normalised text embedding."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{day_one['reference']}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{day_one['reference'].parent / 'biomedclip'}")
    paths = sorted(day_one["archive"].glob("*.png"))
    texts = [*TEXTS, SECRET]
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]),
                                    normalize=True).numpy()
        vectors = model.encode_text(tokenizer(texts), normalize=True).numpy()
    scores = {text: {p.stem: float(s) for p, s in zip(paths, images @ vector)} for text, vector in zip(texts, vectors)}
    return {"scores": scores, "texts": dict(zip(texts, vectors))}


def _search(base: str, **fields) -> requests.Response:
    return requests.post(f"{base}/api/v1/search/text", json=fields, timeout=60)


def test_text_search_ranks_the_archive_as_open_clip_scores_image_and_text(text_server, library):
    for text in TEXTS:
        response = _search(text_server["base"], text=text, k=10)
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["query"]["source"] == "text" and payload["query"]["text"] == text
        assert payload["query"]["findings"] is None and "no finding head" in payload["query"]["findings_note"]
        assert payload["query"]["boxes"] is None and payload["matched_regions_by"] == "text"
        results = payload["results"]
        assert len(results) == 10 and [r["rank"] for r in results] == list(range(1, 11))
        expected = library["scores"][text]
        ours = [r["image_id"] for r in results]
        assert sorted(ours) == sorted(expected)
        theirs = np.array([expected[image_id] for image_id in ours])
        assert np.all(np.diff(theirs) <= 1e-6), (ours, theirs)  # the response's order is open_clip's order
        np.testing.assert_allclose([r["similarity"] for r in results], theirs, atol=6e-5)  # rounded to 4 places
        assert {"wait", "model", "embed", "search", "response", "regions", "total"} <= set(payload["timing_ms"])
    form = requests.post(f"{text_server['base']}/api/v1/search/text", data={"text": TEXTS[0], "k": "3"}, timeout=60)
    multipart = requests.post(f"{text_server['base']}/api/v1/search/text",
                              files={"text": (None, TEXTS[0]), "k": (None, "3")}, timeout=60)
    top3 = [r["id"] for r in _search(text_server["base"], text=TEXTS[0], k=3).json()["results"]]
    assert [r["id"] for r in form.json()["results"]] == top3 == [r["id"] for r in multipart.json()["results"]]


def test_each_result_boxes_the_regions_the_text_points_at(day_one, text_server, library):
    """``matched_regions``: the three regions whose stored embedding is nearest open_clip's own
    embedding of the text (a hand computation over the catalog's region embeddings), with the
    boxes the catalog stores for that image (what ``GET /images/<id>`` gives)."""
    from indexer.catalog import Catalog

    text = TEXTS[0]
    payload = _search(text_server["base"], text=text, k=5).json()
    vector = library["texts"][text]
    catalog = Catalog.open(day_one["db"], day_one["index_dir"])
    try:
        regions = catalog.region_embeddings([r["id"] for r in payload["results"]])
    finally:
        catalog.close()
    assert regions is not None and regions.shape[:2] == (5, 18)
    for result, stored in zip(payload["results"], regions):
        detail = requests.get(f"{text_server['base']}/api/v1/images/{result['id']}", timeout=10).json()
        boxes = {b["index"]: b["box"] for b in detail["boxes"]}
        cosines = stored @ vector
        present = [i for i in range(18) if np.linalg.norm(stored[i]) > 0 and boxes[i] is not None]
        best = sorted(present, key=lambda i: -cosines[i])[:3]
        matched = result["matched_regions"]
        assert [m["index"] for m in matched] == best
        np.testing.assert_allclose([m["similarity"] for m in matched], cosines[best], atol=1e-4)
        for m in matched:
            assert m["region"] == detail["boxes"][m["index"]]["region"]
            np.testing.assert_allclose(m["box"], boxes[m["index"]], atol=0.06)
            x1, y1, x2, y2 = m["box"]
            assert 0 <= x1 < x2 <= detail["width"] and 0 <= y1 < y2 <= detail["height"]


@pytest.mark.parametrize(("fields", "code", "words"), [
    ({"k": 5}, "missing_text", "field 'text'"),
    ({"text": "   \n "}, "bad_parameter", "text is empty"),
    ({"text": "effusion " * 120}, "bad_parameter", "at most 1000"),
    ({"text": "pleural\x00effusion"}, "bad_parameter", "control character (U+0000)"),
    ({"text": "effusion\x9b"}, "bad_parameter", "control character (U+009B)"),
    ({"text": 5}, "bad_parameter", "text must be a JSON string"),
    ({"text": "effusion", "k": 0}, "bad_parameter", "k must be from 1 to 100"),
    ({"text": "effusion", "finding": "Effusion"}, "bad_parameter", "finding unknown"),
    ({"text": "effusion", "age_min": 70, "age_max": 20}, "bad_parameter", "above age_max"),
])
def test_bad_text_requests_are_400_with_the_reason(text_server, fields, code, words):
    response = _search(text_server["base"], **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error


def test_text_in_the_address_twice_or_not_a_post_is_refused(text_server):
    base = f"{text_server['base']}/api/v1/search/text"
    in_url = requests.post(base, params={"text": "effusion"}, timeout=10)
    assert in_url.status_code == 400 and "not in the URL" in in_url.json()["error"]["message"]
    twice = requests.post(base, data=[("text", "effusion"), ("text", "edema")], timeout=10)
    assert twice.status_code == 400 and "text is given more than once" in twice.json()["error"]["message"]
    not_object = requests.post(base, json=["effusion"], timeout=10)
    assert not_object.status_code == 400 and not_object.json()["error"]["code"] == "bad_body"
    get = requests.get(base, timeout=10)
    assert get.status_code == 405 and "POST" in get.headers["Allow"]


def test_readyz_says_text_search_and_the_text_is_never_logged(text_server):
    status = requests.get(f"{text_server['base']}/api/v1/readyz", timeout=10).json()
    assert status["text_search"] is True and status["text_search_note"] is None
    payload = _search(text_server["base"], text=SECRET, k=4).json()
    ids = [r["id"] for r in payload["results"]]

    def audited():
        lines = [json.loads(line) for line in text_server["audit"].read_text().splitlines() if line.strip()]
        return [line for line in lines if line["route"] == "/api/v1/search/text" and line["result_ids"] == ids]

    wait_for(audited, 10, "the audit line of the text search")
    assert audited()[0]["status"] == 200 and audited()[0]["query_id"] is None
    log = text_server["log"].read_text()
    assert f"search by text ({len(SECRET)} characters): k=4, 4 results" in log
    for secret in (SECRET, "Jane Roe", "Roe", "1961"):
        assert secret not in log and secret not in text_server["audit"].read_text()


def test_a_model_without_a_text_tower_answers_409_with_the_reason(client):
    """The tiny V6 index (conftest's ``client``, SQLite and PostgreSQL): no text encoder."""
    response = client.post("/api/v1/search/text", json={"text": "pleural effusion", "k": 3})
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "no_text_search" and "has no text encoder" in error["message"]
    assert "chextriev model init --backbone biomedclip" in error["message"]
    status = client.get("/api/v1/readyz").json
    assert status["text_search"] is False and status["text_search_note"] in error["message"]
    # the text is checked first: a bad one is a 400 whatever the model
    assert client.post("/api/v1/search/text", json={"text": ""}).status_code == 400


def test_encoder_models_without_text_search_say_why(day_one, tmp_path):
    """A standardised CLIP embedding has left the joint space; RAD-DINO has no text tower."""
    import encoder_files

    from chextriev.checkpoint import load_checkpoint
    from chextriev.localization.text import (
        TextSearchUnsupportedError,
        region_scores,
        text_search_note,
    )
    from chextriev.model import cli as model_cli

    standardised = tmp_path / "standardised.ckpt"
    assert run_subcommand(model_cli, ["model", "init", "--backbone", "biomedclip", "--backbone-weights",
                                      str(day_one["root"] / "biomedclip"), "--data", str(day_one["archive"]),
                                      "--out-file", str(standardised), "--sample", "3", "--standardize", "on",
                                      "--no-progress"]) == 0
    dino = encoder_files.write_dinov2(tmp_path / "rad-dino")
    rad_dino = tmp_path / "rad-dino.ckpt"
    assert run_subcommand(model_cli, ["model", "init", "--backbone", "rad-dino", "--backbone-weights", str(dino),
                                      "--data", str(day_one["archive"]), "--out-file", str(rad_dino),
                                      "--sample", "3", "--no-progress"]) == 0
    loaded = load_checkpoint(standardised, precision="fp32")
    assert "standardised" in text_search_note(loaded) and "--standardize auto" in text_search_note(loaded)
    with pytest.raises(TextSearchUnsupportedError, match="standardised"):
        region_scores(loaded, np.zeros((18, loaded.embedding_dim), np.float32), "effusion")
    assert "has no text tower" in text_search_note(load_checkpoint(rad_dino, precision="fp32"))
    assert text_search_note(load_checkpoint(day_one["checkpoint"], precision="fp32")) is None


@pytest.mark.browser
@pytest.mark.slow
def test_the_viewer_searches_by_text_and_boxes_the_regions(text_server):
    """In a real browser: the text box (shown because /readyz says text_search) runs the search,
    the query pane shows the text, the first case opens with the three regions the API names for
    it boxed and starred in the region list; J moves to the next case and its regions."""
    base = text_server["base"]
    text = TEXTS[1]
    api = _search(base, text=text, k=4).json()["results"]
    with viewer_page(base) as (page, expect, errors):
        expect(page.locator("#by-text")).to_be_visible()
        page.fill("#k", "4")
        page.fill("#query-text", text)
        page.press("#query-text", "Enter")
        expect(page.locator("#results li")).to_have_count(4, timeout=60_000)
        expect(page.locator("#query-text-view")).to_be_visible()
        expect(page.locator("#query-text-shown")).to_contain_text(text)
        expect(page.locator("#query-meta")).to_contain_text(f"text · {len(text)} characters")
        expect(page.locator("#case-title")).to_have_text(f"Case {api[0]['id']}", timeout=30_000)
        for rank, result in enumerate(api[:2]):
            if rank:
                page.locator("#results").focus()
                page.keyboard.press("j")
                expect(page.locator("#case-title")).to_have_text(f"Case {result['id']}", timeout=30_000)
            names = [m["region"] for m in sorted(result["matched_regions"], key=lambda m: m["index"])]
            matched = page.locator("#region-list label.match .region-name")  # in the list's (region) order
            expect(matched).to_have_text(names, timeout=10_000)  # waits for this case's detail
            expect(page.locator("#vp-case")).to_have_attribute("data-regions", str(len(names)))
        assert page.locator("#vp-case").evaluate(COLOURED) > 0  # the boxes are drawn in colour on the grey case
        page.keyboard.press("b")  # regions off: nothing coloured left
        expect(page.locator("#vp-case")).to_have_attribute("data-regions", "0")
        assert page.locator("#vp-case").evaluate(COLOURED) == 0
        page.keyboard.press("b")
        expect(page.locator("#vp-case")).to_have_attribute("data-regions", str(len(api[1]["matched_regions"])))
        if os.environ.get("CHEXTRIEV_UPDATE_SCREENSHOTS") == "1":
            page.screenshot(path=str(REPO_ROOT / "docs" / "images" / "viewer_text_search.png"))
    assert not errors, errors
