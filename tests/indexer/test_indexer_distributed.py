"""Distributed indexing on CPU: two shards (as two ranks would write) merged into one index; the
Lightning predict path on one CPU device writing shards; the work list split into rank blocks;
and `chextriev index --devices 2` (two gloo processes) against a one-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, make_archive

from indexer.catalog import Catalog
from indexer.db import default_db_url
from indexer.decode import decode
from indexer.discovery import discover
from indexer.distributed import embed_to_shards, merge_shards
from indexer.engine import make_engine, make_sessionmaker
from indexer.shards import (
    EmbedderInfo,
    rank_block,
    read_shard,
    read_worklist,
    shard_files,
    worklist_length,
    write_shard,
    write_worklist,
)
from indexer.verify import verify


def _fake_shards(root, shard_dir, deidentifier=None):
    embedder = FakeEmbedder()
    info = EmbedderInfo(embedder.checkpoint_id, embedder.embedding_dim, embedder.class_names)
    decoded = [decode(c, 64) for c in discover(root)]
    for d in decoded if deidentifier else ():  # the ledger key a pseudonymising worker stores
        d.key = deidentifier.ledger_key(d.key)
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
                    embedder_factory=lambda device: FakeEmbedder(), progress=False)
    shards = shard_files(shard_dir)
    assert len(shards) == 3  # 13 records: batches of 4 images (the 3 without pixels ride along)
    items = [d for shard in shards for d in read_shard(shard)[0]]
    assert len(items) == 13 and all(d.preview for d in items if d.embedded is not None)
    summary = merge_shards(shard_dir, index_dir=tmp_path / "idx")
    assert summary.indexed == 10
    assert verify(make_sessionmaker(make_engine(default_db_url(tmp_path / "idx"))), tmp_path / "idx") == []


def test_worklist_blocks_cover_it_once(tmp_path):
    records = [(f"r{i}", None) for i in range(11)]
    assert write_worklist(iter(records), tmp_path) == 11
    blocks = [rank_block(worklist_length(tmp_path), rank, 3) for rank in range(3)]
    assert [len(b) for b in blocks] == [3, 4, 4]
    assert [t for b in blocks for t in read_worklist(tmp_path, b)] == records
    assert list(read_worklist(tmp_path, rank_block(0, 1, 2))) == []


# ---------------------------------------------------------------- the CLI on two CPU processes
def _cli(*argv, env):
    """`chextriev ...` in its own process (Lightning re-runs this very command for rank 1)."""
    exe = Path(sys.executable).with_name("chextriev")
    done = subprocess.run([str(exe), *map(str, argv)], check=False, capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _catalog_state(index_dir: Path) -> dict:
    """Everything a catalog holds, in comparable form (timestamps and build ids left out)."""
    from sqlalchemy import select

    from indexer.db import Image, Patient, Source, Study
    from indexer.preview_store import PreviewStore
    from indexer.vector_store import open_store

    sessions = make_sessionmaker(make_engine(default_db_url(index_dir)))
    with sessions() as session:
        columns = [c for c in Image.__table__.c if c.name not in ("created", "updated")]
        images = [dict(row._mapping) for row in session.execute(
            select(*columns).order_by(Image.id))]
        sources = session.execute(select(Source.id, Source.path, Source.image_pk,
                                         Source.content_hash).order_by(Source.id)).all()
        patients = session.execute(select(Patient.id, Patient.key).order_by(Patient.id)).all()
        studies = session.execute(select(Study.id, Study.key, Study.patient_id)
                                  .order_by(Study.id)).all()
        store = open_store(session, index_dir)
        from indexer.db import catalog_state

        rows = catalog_state(session).store_rows
    previews = PreviewStore(index_dir, rows)
    slots = [(r["id"], r["vector_slot"]) for r in images if r["vector_slot"] is not None]
    catalog = Catalog.open(None, index_dir)
    ids = np.sort(catalog.index.ids)
    return {"images": images, "sources": sources, "patients": patients, "studies": studies,
            "vectors": store.embeddings([s for _, s in slots]),
            "regions": store.regions([s for _, s in slots]),
            "previews": [previews.get(s, pk) for pk, s in slots], "index_ids": ids,
            "hits": [[h.image_id for h in hit] for hit in
                     catalog.search(catalog.vectors(ids.tolist()), k=3)]}


def _assert_same(one: dict, two: dict) -> None:
    for name in ("sources", "patients", "studies", "previews"):
        assert one[name] == two[name], name
    assert len(one["images"]) == len(two["images"])
    for a, b in zip(one["images"], two["images"]):
        floats = ("probabilities", "region_probabilities", "boxes")
        assert {k: v for k, v in a.items() if k not in floats} == \
            {k: v for k, v in b.items() if k not in floats}
        for key in floats:
            left, right = a[key], b[key]
            if isinstance(left, dict):
                left, right = list(left.values()), [right[k] for k in left]
            np.testing.assert_allclose(np.array(left, dtype=float), np.array(right, dtype=float),
                                       atol=1e-4, err_msg=key)
    np.testing.assert_allclose(one["vectors"], two["vectors"], atol=1e-5)
    np.testing.assert_allclose(one["regions"], two["regions"], atol=2e-2, equal_nan=True)
    np.testing.assert_array_equal(one["index_ids"], two["index_ids"])
    assert one["hits"] == two["hits"]


@pytest.mark.slow
def test_two_cpu_processes_from_the_cli_equal_one(synth_and_ckpt, tmp_path):
    """`chextriev index --devices 2` (gloo, two CPU processes) gives the catalog and index of a
    one-process run, with the pseudonymiser and previews; the rerun embeds only the new file."""
    from PIL import Image as PILImage

    archive, ckpt = synth_and_ckpt
    source = tmp_path / "src"
    shutil.copytree(archive / "files", source)  # a plain tree: boxes from the checkpoint's atlas
    env = {**os.environ, "CHEXTRIEV_PSEUDONYM_KEY": "k" * 32, "OMP_NUM_THREADS": "1"}
    common = ["--data", source, "--checkpoint", ckpt, "--device", "cpu", "--precision", "fp32",
              "--batch-size", "3", "--workers", "0", "--no-progress", "--pseudonymise"]
    _cli("index", *common, "--index-dir", tmp_path / "one", env=env)
    out = _cli("index", *common, "--index-dir", tmp_path / "two", "--devices", "2", env=env)
    assert "failed 0" in out and "rank 1 of 2: 3 record(s)" in out  # a second process did half
    first = _catalog_state(tmp_path / "two")
    assert len(first["index_ids"]) == 6 and all(first["previews"])
    assert all(r["image_id"] != Path(r["source_path"]).stem for r in first["images"])  # pseudonyms
    _assert_same(_catalog_state(tmp_path / "one"), first)
    assert not list((tmp_path / "two" / "shards").glob("shard-*"))  # merged, then removed
    from indexer.bundle import read_bundle

    one, two = read_bundle(tmp_path / "one"), read_bundle(tmp_path / "two")
    assert two.checkpoint_file() == one.checkpoint_file() == Path(ckpt).resolve()  # servable alone
    assert two.checkpoint == one.checkpoint and two.data["model"] == one.data["model"]

    # A new file: the ledger leaves one record, which only one of the two ranks gets.
    png = next(source.rglob("*.png"))
    pixels = np.asarray(PILImage.open(png).convert("L"))
    PILImage.fromarray(255 - pixels).save(png.with_name("new-image.png"))
    _cli("index", *common, "--index-dir", tmp_path / "one", env=env)
    out = _cli("index", *common, "--index-dir", tmp_path / "two", "--devices", "2", env=env)
    assert "indexed 1," in out and "rank 0 of 2: 0 record(s)" in out
    _assert_same(_catalog_state(tmp_path / "one"), _catalog_state(tmp_path / "two"))
    assert "OK: catalog and index" in _cli("index", "verify", "--index-dir", tmp_path / "two", env=env)


def test_a_merge_refuses_shards_that_would_mix_the_ledger(tmp_path):
    """Shards made with another --pseudonymise setting or key than the catalog's, or a shard
    folder mixing them, are refused with the reason before anything is written."""
    from chextriev.io.deid import Deidentifier, key_id
    from indexer.ledger import LedgerModeError

    root = tmp_path / "archive"
    make_archive(root)
    one, two = Deidentifier(b"1" * 32), Deidentifier(b"2" * 32)
    shards = {name: tmp_path / name for name in ("clear", "one", "two", "mixed")}
    _fake_shards(root, shards["clear"])
    _fake_shards(root, shards["one"], one)
    _fake_shards(root, shards["two"], two)
    shards["mixed"].mkdir()
    shutil.copy(shard_files(shards["clear"])[0], shards["mixed"])
    shutil.copy(shard_files(shards["one"])[1], shards["mixed"])

    def size(index_dir):
        return Catalog.open(None, index_dir).size if (index_dir / "manifest.json").exists() else 0

    clear_dir, hashed_dir, fresh_dir = tmp_path / "idx-clear", tmp_path / "idx-one", tmp_path / "idx-new"
    assert merge_shards(shards["clear"], index_dir=clear_dir).indexed == 10
    assert merge_shards(shards["one"], index_dir=hashed_dir).indexed == 10
    with pytest.raises(LedgerModeError, match=f"clear and keyed hashes of key id {key_id(one.key)}"):
        merge_shards(shards["one"], index_dir=clear_dir)
    with pytest.raises(LedgerModeError, match="in the clear and keyed hashes"):
        merge_shards(shards["clear"], index_dir=hashed_dir)
    with pytest.raises(LedgerModeError, match=f"keyed hashes of key id .*{key_id(one.key)}"):
        merge_shards(shards["two"], index_dir=hashed_dir)
    with pytest.raises(LedgerModeError, match="shard-r0001"):
        merge_shards(shards["mixed"], index_dir=fresh_dir)
    assert size(clear_dir) == 10 and size(hashed_dir) == 10 and size(fresh_dir) == 0
    sessions = make_sessionmaker(make_engine(default_db_url(hashed_dir)))
    assert verify(sessions, hashed_dir) == []
    # The same key merges again (idempotent), as a rerun of the same distributed run would.
    assert merge_shards(shards["one"], index_dir=hashed_dir).indexed == 0
