"""Distributed indexing pieces on CPU: two shards (as two ranks would write) merged into one
index; and the Lightning predict path on one CPU device writing shards."""

from __future__ import annotations

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, make_archive

from indexer.catalog import Catalog
from indexer.db import default_db_url, make_engine, make_sessionmaker
from indexer.decode import decode
from indexer.discovery import discover
from indexer.distributed import EmbedderInfo, embed_to_shards, merge_shards, read_shard, write_shard
from indexer.sync import verify


def _fake_shards(root, shard_dir):
    embedder = FakeEmbedder()
    info = EmbedderInfo(embedder.checkpoint_id, embedder.embedding_dim, embedder.class_names)
    decoded = [decode(c, 64) for c in discover(root)]
    halves = [decoded[0::2], decoded[1::2]]
    halves[1].append(halves[0][0])  # DistributedSampler padding repeats a file on one rank
    for rank, items in enumerate(halves):
        pixels = [d.pixels for d in items if d.pixels is not None]
        write_shard(shard_dir / f"shard-r{rank:04d}-b0000000.npz", items,
                    embedder(pixels) if pixels else None, info)
    return decoded, embedder


def test_two_shards_merge_into_one_index(tmp_path):
    root = tmp_path / "archive"
    make_archive(root)
    shard_dir = tmp_path / "shards"
    decoded, embedder = _fake_shards(root, shard_dir)
    items, info = read_shard(shard_dir / "shard-r0000-b0000000.npz")
    assert info.checkpoint_id == embedder.checkpoint_id and len(items) == (len(decoded) + 1) // 2
    assert any(d.embedded is not None for d in items) and any(d.thumbnail for d in items)
    index_dir = tmp_path / "idx"
    summary = merge_shards(shard_dir, index_dir=index_dir)
    assert summary.indexed == 10 and summary.duplicates == 1
    assert summary.skipped == 1 and summary.failed == 1 and summary.unchanged == 1
    sessions = make_sessionmaker(make_engine(default_db_url(index_dir)))
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(None, index_dir)
    ids = catalog.index.ids
    hits = catalog.search(catalog.vectors(ids), k=1)
    assert [h[0].image_id for h in hits] == ids.tolist()
    # The merged vectors are the embedder's vectors of the decoded pixels.
    row = catalog.images([int(ids[0])])[0]
    d = next(x for x in decoded if x.path == row["source_path"])
    np.testing.assert_allclose(catalog.vectors([int(ids[0])])[0], embedder([d.pixels]).embeddings[0],
                               atol=2e-3)
    again = merge_shards(shard_dir, index_dir=index_dir)  # idempotent
    assert again.indexed == 0 and Catalog.open(None, index_dir).size == 10


@pytest.mark.slow
def test_lightning_predict_writes_shards_on_cpu(tmp_path):
    root = tmp_path / "archive"
    make_archive(root)
    shard_dir = tmp_path / "shards"
    embed_to_shards(root, None, shard_dir, devices=1, accelerator="cpu", batch_size=4, workers=0,
                    embedder_factory=lambda device: FakeEmbedder())
    shards = sorted(shard_dir.glob("shard-*.npz"))
    assert len(shards) == 4  # 14 files in batches of 4
    summary = merge_shards(shard_dir, index_dir=tmp_path / "idx")
    assert summary.indexed == 10
    assert verify(make_sessionmaker(make_engine(default_db_url(tmp_path / "idx"))), tmp_path / "idx") == []
