"""verify checks the index payload, not a side file: 40 % of a segment overwritten is caught and
named, repair rebuilds it, and searches find the right neighbours again. Also the vector store's
commit protocol."""

from __future__ import annotations

import numpy as np
import pytest
from indexer_fakes import clustered_vectors, open_sessions, write_embedded

from indexer.catalog import Catalog
from indexer.sync import repair
from indexer.vector_store import StoreError, VectorStore, dequantise_regions, quantise_regions
from indexer.verify import verify


def _self_hits(catalog, ids):
    hits = catalog.search(catalog.vectors(ids), k=1, nprobe=64)
    return np.mean([bool(h) and h[0].image_id == i for h, i in zip(hits, ids)])


@pytest.mark.parametrize("kind", ["flat", "ivf-flat"])
def test_corrupted_payload_caught_and_repaired(tmp_path, kind):
    index_dir = tmp_path / "idx"
    vectors = clustered_vectors(3000, seed=1)
    write_embedded(index_dir, vectors, index_type=kind)
    sessions = open_sessions(index_dir)
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(None, index_dir)
    ids = catalog.index.ids[::37]
    assert _self_hits(catalog, ids) == 1.0
    segment = max((index_dir / "segments").glob("*.faiss"), key=lambda p: p.stat().st_size)
    data = bytearray(segment.read_bytes())
    start, stop = int(0.3 * len(data)), int(0.7 * len(data))
    data[start:stop] = np.random.default_rng(0).integers(0, 256, stop - start, np.uint8).tobytes()
    segment.write_bytes(bytes(data))  # 40 % of the payload overwritten
    problems = verify(sessions, index_dir)
    assert any(segment.name in p and "sha256" in p for p in problems), problems
    assert any("differ from the catalog's embeddings" in p for p in problems), problems
    sampled = verify(sessions, index_dir, sample=200)
    assert any("of 200 vector(s)" in p for p in sampled), sampled
    assert _self_hits(Catalog.open(None, index_dir), ids) < 0.9  # searches are wrong now
    manifest = repair(sessions, index_dir)
    assert manifest.n_vectors == 3000 and manifest.index_type == kind
    assert verify(sessions, index_dir) == []
    assert _self_hits(Catalog.open(None, index_dir), ids) == 1.0


def test_store_commit_protocol(tmp_path):
    rng = np.random.default_rng(0)
    store = VectorStore.open(tmp_path, committed=0, dim=4, create=True)
    regions = rng.standard_normal((3, 18, 8)).astype(np.float32)
    slots = store.write([10, 11, 12], rng.standard_normal((3, 4)), regions)
    assert slots.tolist() == [0, 1, 2]
    store.commit(3)
    # A write whose database transaction never committed: the tail is written, not committed.
    tail = store.write([13, 14], np.ones((2, 4)), regions[:2])
    assert tail.tolist() == [3, 4] and store.file_rows()["keys"] == 5
    reopened = VectorStore.open(tmp_path, committed=3)  # what the database says
    assert reopened.keys([0, 1, 2]).tolist() == [10, 11, 12]
    with pytest.raises(StoreError, match="out of range"):
        reopened.embeddings([3])
    again = reopened.write([20], np.zeros((1, 4)), regions[:1])  # overwrites the stale tail
    assert again.tolist() == [3] and reopened.file_rows()["keys"] == 4
    reopened.commit(4)
    assert reopened.keys([3]).tolist() == [20]
    got = reopened.regions([0, 1, 2])
    cos = np.einsum("nrd,nrd->nr", got / np.linalg.norm(got, axis=2, keepdims=True),
                    regions / np.linalg.norm(regions, axis=2, keepdims=True))
    assert cos.min() > 0.999  # int8 codes with a per-region scale
    with pytest.raises(StoreError, match="shorter than the catalog says"):
        VectorStore.open(tmp_path, committed=9)
    with pytest.raises(StoreError, match="4-d"):
        VectorStore.open(tmp_path, committed=4, dim=8)
    with pytest.raises(StoreError, match="deleted or the wrong"):
        VectorStore.open(tmp_path / "elsewhere", committed=4)


def test_region_quantisation_keeps_missing_regions():
    regions = np.random.default_rng(1).standard_normal((2, 18, 16)).astype(np.float32)
    regions[1, 5] = np.nan
    codes, scales = quantise_regions(regions)
    back = dequantise_regions(codes, scales)
    assert np.isnan(back[1, 5]).all() and np.isfinite(back[0]).all()
    assert np.abs(back[0] - regions[0]).max() <= np.abs(regions[0]).max() / 127 + 1e-6


# ---------------------------------------------------------------- previews beside the index
def _previews(indexed):
    """``{image pk: preview bytes or None}`` of the indexed images."""
    from sqlalchemy import select

    from indexer.db import STATUS_INDEXED, Image

    with indexed.sessions()() as session:
        ids = session.scalars(select(Image.id).where(Image.status == STATUS_INDEXED)).all()
    catalog = Catalog.open(indexed.db_url, indexed.index_dir)  # previews are read through the door
    try:
        return {pk: (found[0] if (found := catalog.preview_bytes(pk)) else None) for pk in ids}
    finally:
        catalog.close()


def test_previews_stored_per_image_and_checked_by_verify(indexed):
    """Every indexed image has its preview (a grey JPEG of the decoded pixels); a damaged byte is
    caught by verify and that preview is not served (the thumbnail is)."""
    import io

    from PIL import Image as PILImage

    from chextriev.io.images import load_image

    previews = _previews(indexed)
    assert len(previews) == 10 and all(previews.values())
    catalog = Catalog.open(indexed.db_url, indexed.index_dir)
    for pk, data in previews.items():
        with PILImage.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "L"
            shown = np.asarray(image, np.float32) / 255
        original = load_image(catalog.images([pk])[0]["source_path"])
        assert shown.shape == original.shape and np.abs(shown - original).mean() < 0.02
    data_file = indexed.index_dir / "previews" / "data.bin"
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    problems = verify(indexed.sessions(), indexed.index_dir)
    assert len(problems) == 1 and "damaged" in problems[0]
    assert sum(v is None for v in _previews(indexed).values()) == 1


def test_an_uncommitted_preview_tail_is_never_served(indexed, fake_embedder):
    """A run killed after writing previews but before its commit leaves a tail; the next run
    cuts it and stores its own images' previews in those slots."""
    from indexer_fakes import write_png

    from indexer.db import catalog_state
    from indexer.pipeline import run_index
    from indexer.preview_store import PreviewStore

    before = _previews(indexed)
    with indexed.sessions()() as session:
        committed = catalog_state(session).store_rows
    store = PreviewStore(indexed.index_dir, committed)
    store.write([max(before) + 1, max(before) + 2], [b"stale-1", b"stale-2"])  # never committed
    assert store.file_rows() == committed + 2
    assert _previews(indexed) == before
    write_png(indexed.root / "png" / "new.png", 99)
    summary = run_index(indexed.root, embedder=fake_embedder, index_dir=indexed.index_dir,
                        db_url=indexed.db_url, batch_size=4, progress=False)
    assert summary.indexed == 1
    after = _previews(indexed)
    new = set(after) - set(before)
    assert len(new) == 1 and after[new.pop()].startswith(b"\xff\xd8\xff")
    assert {pk: after[pk] for pk in before} == before
    assert verify(indexed.sessions(), indexed.index_dir) == []
