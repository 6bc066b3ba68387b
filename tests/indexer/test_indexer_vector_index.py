"""The Faiss wrapper against an exact numpy oracle: recall, save/load, add/remove, selectors."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest

from chextriev.errors import UnknownNameError
from chextriev.retrieval import exact_knn
from indexer.exact import ArrayExact
from indexer.faiss_factory import default_nlist, factory_string, resolve_index_type
from indexer.manifest import IndexStateError, Manifest
from indexer.segments import tier_of
from indexer.vector_index import VectorIndex


def clustered(n, d=32, clusters=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def oracle(base, ids, queries, k):
    """The exact top-k ids by inner product: the project's one retrieval core."""
    top, _ = exact_knn(queries, base, k, normalize=False)
    return ids[top]


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def data():
    base = clustered(4000)
    ids = np.arange(4000, dtype=np.int64) * 7 + 3  # non-contiguous primary keys
    queries = clustered(100, seed=1)
    return base, ids, queries


def test_flat_is_exact(data):
    base, ids, queries = data
    index = VectorIndex.build(ids, base, index_type="flat")
    _, found = index.search(queries, 10)
    assert recall(found, oracle(base, ids, queries, 10)) == 1.0


@pytest.mark.parametrize("kind,threshold", [
    ("ivf-flat", 0.95), pytest.param("ivf-pq", 0.9, marks=pytest.mark.slow)])
def test_ivf_recall_against_oracle(data, kind, threshold):
    base, ids, queries = data
    index = VectorIndex.build(ids, base, index_type=kind, nprobe=16)
    assert index.index_type == kind and index.factory.startswith("IVF")
    scores, found = index.search(queries, 10)
    r = recall(found, oracle(base, ids, queries, 10))
    assert r >= threshold, r
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_auto_and_factories():
    assert resolve_index_type("auto", 100) == "flat"
    assert resolve_index_type("auto", 100_000) == "ivf-flat"
    assert resolve_index_type("auto", 5_000_000) == "ivf-pq"
    assert factory_string("ivf-pq", 1024, 1_000_000).endswith("PQ64x8")
    assert 1 <= default_nlist(10) <= default_nlist(1_000_000) == 1000
    with pytest.raises(UnknownNameError, match="ivf-flat"):
        resolve_index_type("hnsw", 10)


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq"])
def test_save_load_round_trip_atomic(data, tmp_path, kind):
    base, ids, queries = data
    base, ids = base[:1000], ids[:1000]
    index = VectorIndex.build(ids, base, index_type=kind)
    first = index.save(tmp_path, checkpoint_id="ck", catalog_generation=3)
    expected = index.search(queries, 5)
    loaded = VectorIndex.load(tmp_path, exact=ArrayExact(ids, base))
    got = loaded.search(queries, 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    assert loaded.manifest.catalog_generation == 3 and loaded.manifest.checkpoint_id == "ck"
    np.testing.assert_array_equal(loaded.faiss_ids(), np.sort(ids))
    # A second save replaces the changed segment; files of the previous manifest stay (a reader
    # may have just read it), older ones go; no temp files remain.
    loaded.remove(ids[:10])
    second = loaded.save(tmp_path, checkpoint_id="ck")
    assert second.build_id != first.build_id
    on_disk = {f"segments/{p.name}" for p in (tmp_path / "segments").iterdir()}
    assert on_disk == set(second.files()) | set(first.files())
    assert set(second.previous_files) == set(first.files())
    third = VectorIndex.load(tmp_path)
    third.save(tmp_path, checkpoint_id="ck")
    on_disk = {f"segments/{p.name}" for p in (tmp_path / "segments").iterdir()}
    assert not (set(first.files()) - set(second.files())) & on_disk  # two saves later: swept
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert VectorIndex.load(tmp_path).ntotal == len(ids) - 10


@pytest.mark.parametrize("index_type", ["ivf-flat", "flat"])  # flat: the merge once segfaulted
def test_incremental_save_writes_only_new_segments_and_merges_tiers(tmp_path, index_type):
    base = clustered(3000, seed=3)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(ids[:2000], base[:2000], index_type=index_type, expected=3000)
    index.merge_factor = 4
    index.save(tmp_path, checkpoint_id=None)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "segments").iterdir()}
    for start in range(2000, 2300, 100):  # three small segments: no merge yet
        index.add(ids[start:start + 100], base[start:start + 100])
        manifest = index.save(tmp_path, checkpoint_id=None)
    assert sorted(s["n"] for s in manifest.segments) == [100, 100, 100, 2000]
    for name, mtime in written.items():  # the first segment was never rewritten
        assert (tmp_path / "segments" / name).stat().st_mtime_ns == mtime
    index = VectorIndex.load(tmp_path)  # segments read back from disk merge with a new one
    index.merge_factor = 4
    index.add(ids[2300:2400], base[2300:2400])  # the fourth of tier 0: merged into one
    manifest = index.save(tmp_path, checkpoint_id=None)
    gc.collect()  # a merged index that a dropped wrapper owned would be freed here
    assert sorted(s["n"] for s in manifest.segments) == [400, 2000]
    assert index.search(base[2300:2310], 1, nprobe=64)[1][:, 0].tolist() == ids[2300:2310].tolist()
    loaded = VectorIndex.load(tmp_path, exact=ArrayExact(ids[:2400], base[:2400]))
    np.testing.assert_array_equal(loaded.faiss_ids(), ids[:2400])
    _, found = loaded.search(base[2300:2310], 1, nprobe=64)
    assert (found[:, 0] == ids[2300:2310]).all()
    assert tier_of(100) == 0 and tier_of(2000) == 1 and tier_of(20_000) == 3  # tiers of x4 (MERGE_FACTOR)
    assert tier_of(20_000, factor=10) == 2


@pytest.mark.parametrize("index_type", ["ivf-flat", "flat"])
def test_a_merge_over_the_memory_bound_is_left_undone(tmp_path, index_type):
    """A merged segment is built in memory: a group whose vectors would exceed
    ``merge_max_bytes`` stays as it is (searchable, as every segment is), a smaller one merges."""
    base = clustered(2400, seed=5)
    ids = np.arange(2400, dtype=np.int64)
    index = VectorIndex.build(ids[:2000], base[:2000], index_type=index_type, expected=2400)
    index.merge_factor = 4
    per_vector = 32 * 4 + 8  # IVF-flat and flat at D = 32: the vector and its id
    index.merge_max_bytes = 400 * per_vector - 1  # four segments of 100: one byte too many
    for start in range(2000, 2400, 100):
        index.add(ids[start:start + 100], base[start:start + 100])
        manifest = index.save(tmp_path, checkpoint_id=None)
    assert sorted(s["n"] for s in manifest.segments) == [100, 100, 100, 100, 2000]
    _, found = VectorIndex.load(tmp_path).search(base[2000:2400:40], 1, nprobe=64)
    assert found[:, 0].tolist() == ids[2000:2400:40].tolist()
    index.merge_max_bytes = 400 * per_vector
    manifest = index.save(tmp_path, checkpoint_id=None)
    assert sorted(s["n"] for s in manifest.segments) == [400, 2000]


def test_add_remove_and_vectors(data):
    base, ids, queries = data
    index = VectorIndex.build(ids[:3000], base[:3000], index_type="flat")
    index.add(ids[3000:], base[3000:])
    assert index.ntotal == 4000
    np.testing.assert_allclose(index.vectors(ids[3990:]), base[3990:], atol=2e-3)
    assert np.isnan(index.vectors([1])).all()  # unknown id
    with pytest.raises(ValueError):
        index.add(ids[:1], base[:1])
    assert index.remove(ids[::2]) == 2000
    _, found = index.search(queries, 10)
    assert not np.isin(found, ids[::2]).any()
    assert recall(found, oracle(base[1::2], ids[1::2], queries, 10)) == 1.0


@pytest.mark.parametrize("kind", ["flat", "ivf-flat"])
@pytest.mark.parametrize("brute_force_max", [50_000, 0])
def test_allowed_ids_brute_force_and_selector(data, kind, brute_force_max, monkeypatch):
    base, ids, queries = data
    index = VectorIndex.build(ids, base, index_type=kind, nprobe=64)
    monkeypatch.setattr(index, "BRUTE_FORCE_MAX", brute_force_max)
    allowed = ids[::3]
    _, found = index.search(queries, 10, allowed_ids=allowed)
    assert np.isin(found[found >= 0], allowed).all()
    assert recall(found, oracle(base[::3], allowed, queries, 10)) >= 0.95


def test_manifest_errors(tmp_path):
    with pytest.raises(IndexStateError, match="missing"):
        VectorIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"build_id": "x", "format": 2}))
    with pytest.raises(IndexStateError, match="not a valid"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"build_id": "x", "build_dir": "b"}))
    with pytest.raises(IndexStateError, match="index repair"):  # format 1 (chextriev 0.1)
        Manifest.read(tmp_path)


def test_manifest_keeps_extra_keys(tmp_path):
    index = VectorIndex.build(np.arange(5), clustered(5), index_type="flat")
    index.save(tmp_path, checkpoint_id="ck", detector={"sha256": "abc"})
    assert Manifest.read(tmp_path).extra == {"detector": {"sha256": "abc"}}
    index.add(np.arange(5, 7), clustered(2, seed=4))
    again = index.save(tmp_path, checkpoint_id="ck")  # carried over to the next build
    assert again.extra == {"detector": {"sha256": "abc"}}
    assert json.loads((tmp_path / "manifest.json").read_text())["detector"] == {"sha256": "abc"}


def test_empty_index_search(tmp_path):
    index = VectorIndex.build(np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    _scores, ids = index.search(np.ones((2, 8), np.float32), 3)
    assert ids.shape == (2, 3) and (ids == -1).all()
    index.save(tmp_path, checkpoint_id=None)
    assert VectorIndex.load(tmp_path).ntotal == 0


@pytest.mark.gpu
def test_gpu_build_and_search(data):
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("no GPU visible to Faiss (no CUDA device, or faiss-cpu installed: "
                    "pip install faiss-gpu)")
    base, ids, queries = data
    index = VectorIndex.build(ids, base, index_type="ivf-flat", device="cuda")
    _, found = index.search(queries, 10)
    assert index.segments[0].gpu is not None
    assert recall(found, oracle(base, ids, queries, 10)) >= 0.95
