"""The real path: `chextriev synth` archive + a tiny trained checkpoint, indexed through the CLI
with decoding worker processes and the checkpoint's model (embed_images), the archive's own
region boxes travelling with its records."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

from indexer import cli
from indexer.catalog import Catalog


def _run(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_index_synthetic_archive_with_the_model(synth_and_ckpt, tmp_path, capsys):
    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image
    from chextriev.io.synthetic import read_archive

    archive, ckpt = synth_and_ckpt
    source = tmp_path / "src"
    shutil.copytree(archive, source)
    # Not in the archive's manifest: a dataset layout reads its records, not every file.
    (source / "files" / "stray.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk" * 20)
    index_dir = tmp_path / "idx"
    argv = ["index", "--source", str(source), "--checkpoint", str(ckpt), "--index-dir",
            str(index_dir), "--device", "cpu", "--workers", "2", "--batch-size", "4", "--no-progress"]
    assert _run(argv) == 0
    out = capsys.readouterr().out
    assert "failed 0" in out
    catalog = Catalog.open(None, index_dir)
    loaded = load_checkpoint(ckpt)
    assert catalog.checkpoint_id == loaded.checkpoint_id and catalog.embedding_dim == loaded.embedding_dim
    n_images = sum(1 for _ in (source / "files").rglob("*.png")) + sum(
        1 for p in (source / "files").rglob("*.dcm") if p.name != "stray.dcm")
    assert catalog.size == n_images
    rows = catalog.images(catalog.index.ids.tolist())
    assert {r["format"] for r in rows} == {"png", "dicom"}
    assert all(r["known_findings"] is not None for r in rows)  # from the scene graphs
    assert {r["box_source"] for r in rows} == {"given"}  # the archive's true boxes
    truth = {r.image_id: r for r in read_archive(source)}
    for row in rows:
        given = np.array([[np.nan] * 4 if b is None else b for b in row["boxes"]], np.float32)
        np.testing.assert_allclose(given, truth[row["image_id"]].boxes, atol=0.02)
    # Query with each archived image and its boxes through THE embedding function: itself first.
    images = [load_image(r["source_path"]) for r in rows]
    vectors = embed_images(loaded, images, [truth[r["image_id"]].boxes for r in rows]).embeddings
    hits = catalog.search(vectors, k=3)
    assert [h[0].image_id for h in hits] == [r["id"] for r in rows]
    assert all(h[0].score > 0.99 for h in hits)
    np.testing.assert_allclose(catalog.vectors([rows[0]["id"]])[0], vectors[0], atol=5e-3)
    if loaded.has_regions:
        assert catalog.region_embeddings([rows[0]["id"]]).shape[:2] == (1, 18)
    # Rerun: nothing new.
    assert _run(argv) == 0
    assert "indexed 0" in capsys.readouterr().out
    assert _run(["index", "verify", "--index-dir", str(index_dir)]) == 0
