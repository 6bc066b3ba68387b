"""Day one with no labels, end to end: ``chextriev model init`` makes a checkpoint from an encoder
alone (a tiny random BiomedCLIP-layout model in open_clip's own format), ``chextriev index``
indexes a folder of real NIH radiographs with it, and ``chextriev serve`` answers image search
over HTTP; the model has no finding head, so the server says so instead of predicting findings.
The text tower travels in the checkpoint: its text embeddings rank the indexed images exactly as
the library's own image-text similarity does (what `POST /api/v1/search/text` is built on:
test_server_text.py). The index and checkpoint (`day_one`) are conftest's, shared with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from server_helpers import (  # day_one: conftest
    run_subcommand,
    serve_until_ready,
    stop_server,
    viewer_page,
)

TEXTS = ["left pleural effusion", "enlarged heart", "no acute finding"]


@pytest.fixture(scope="module")
def served(day_one):
    base, process = serve_until_ready(["--checkpoint", str(day_one["checkpoint"]), "--db", day_one["db"],
                                       "--index-dir", str(day_one["index_dir"])], day_one["root"] / "server.log")
    yield base
    stop_server(process)


def test_a_no_label_checkpoint_indexes_and_serves_image_search(day_one, served):
    status = requests.get(f"{served}/api/v1/readyz", timeout=10).json()
    assert status["index_size"] == 10 and status["has_findings"] is False and status["class_names"] == []
    assert "no finding head" in status["findings_note"]
    query = sorted(day_one["archive"].glob("*.png"))[3]
    with open(query, "rb") as handle:
        response = requests.post(f"{served}/api/v1/search", files={"image": (query.name, handle, "image/png")},
                                 data={"k": "5"}, timeout=60)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["results"]) == 5
    top = payload["results"][0]
    assert top["image_id"] == query.stem and top["similarity"] > 0.999  # the archived copy of the query
    assert payload["query"]["findings"] is None and payload["query"]["predicted_findings"] is None
    assert "no finding head" in payload["query"]["findings_note"]
    assert all(result["predicted_findings"] is None for result in payload["results"])
    assert top["matched_regions"] and all(-1.01 <= m["similarity"] <= 1.01 for m in top["matched_regions"])
    detail = requests.get(f"{served}/api/v1/images/{top['id']}", timeout=10).json()
    assert detail["predicted_findings"] is None and detail["region_probabilities"] is None
    assert "no finding head" in detail["findings_note"]
    heat = requests.get(f"{served}/api/v1/images/{top['id']}/heatmap", params={"finding": "effusion"}, timeout=10)
    assert heat.status_code == 409 and heat.json()["error"]["code"] == "no_finding_head"
    by_id = requests.post(f"{served}/api/v1/search/by-id/{top['id']}", data={"k": "3"}, timeout=30).json()
    assert by_id["query"]["predicted_findings"] is None and len(by_id["results"]) == 3


def test_the_catalog_stores_no_predictions(day_one):
    import sqlite3

    with sqlite3.connect(day_one["index_dir"] / "catalog.sqlite") as connection:
        rows = connection.execute("SELECT probabilities, region_probabilities FROM images").fetchall()
    assert len(rows) == 10 and all(p in (None, "null") and r in (None, "null") for p, r in rows)  # JSON null


def test_text_embeddings_rank_the_index_as_the_library_scores_image_and_text(day_one):
    """The checkpoint alone gives a text encoder in the index embedding's space: the catalog's
    inner-product ranking of a text equals open_clip's own image-text cosine ranking."""
    import open_clip

    from chextriev.checkpoint import load_checkpoint
    from indexer.catalog import Catalog

    loaded = load_checkpoint(day_one["checkpoint"], precision="fp32")
    assert loaded.text_encoder is not None and loaded.regions_in_text_space
    texts = loaded.text_encoder.embed(TEXTS)
    assert texts.shape == (3, loaded.embedding_dim) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    catalog = Catalog.open(day_one["db"], day_one["index_dir"])
    try:
        hits = catalog.search(texts, 10)
        rows = catalog.images([h.image_id for h in hits[0]])
    finally:
        catalog.close()
    library, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{day_one['reference']}")
    library.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{day_one['reference'].parent / 'biomedclip'}")
    paths = {p.stem: p for p in day_one["archive"].glob("*.png")}
    with torch.no_grad():
        images = library.encode_image(torch.stack([preprocess(Image.open(paths[r["image_id"]]).convert("RGB"))
                                                   for r in rows]), normalize=True)
        text = library.encode_text(tokenizer(TEXTS[:1]), normalize=True)
    library_scores = (images @ text.T)[:, 0].numpy()
    ours = np.array([h.score for h in hits[0]])
    np.testing.assert_allclose(ours, library_scores, atol=1e-5)
    assert np.all(np.diff(library_scores) <= 1e-6)  # the index's order is the library's order


def test_model_init_reports_what_it_did(day_one, tmp_path, capsys):
    from chextriev.model import cli as model_cli

    out = tmp_path / "regions.ckpt"
    hub = day_one["root"] / "biomedclip"
    assert run_subcommand(model_cli, ["model", "init", "--backbone", "biomedclip", "--backbone-weights", str(hub),
                                      "--data", str(day_one["archive"]), "--out-file", str(out), "--sample", "4",
                                      "--embedding", "regions", "--standardize", "on", "--no-progress",
                                      "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels_read"] == 0 and report["images_read"] == 4 and report["records"] == 10
    assert report["standardized"] is True and report["text_search"] is False
    assert any("no text search" in note for note in report["notes"])
    from chextriev.checkpoint import load_checkpoint

    loaded = load_checkpoint(out, precision="fp32")
    assert loaded.text_encoder is None and loaded.config.embedding_source == "regions"
    scale = loaded.model.features.region_scale
    assert not torch.allclose(scale, torch.ones_like(scale))  # fitted on the archive


@pytest.mark.browser
@pytest.mark.slow
def test_the_viewer_says_why_there_are_no_predicted_findings(day_one, served):
    """In a real browser: an upload search with the no-label model shows the reason where the
    findings and the finding heatmap toggles would be, and raises no error."""
    query = sorted(day_one["archive"].glob("*.png"))[2]
    with viewer_page(served) as (page, expect, errors):
        page.fill("#k", "4")
        page.set_input_files("#file", str(query))
        expect(page.locator("#results li")).to_have_count(4, timeout=60_000)
        expect(page.locator("#query-predicted")).to_contain_text("No predicted findings: this model predicts no")
        expect(page.locator("#heat-findings")).to_contain_text("No finding heatmaps")
        expect(page.locator("#results li .r-pred").first).to_contain_text("no finding head")
        page.keyboard.press("h")  # the heatmap shortcut does nothing without findings
    assert not errors, errors
