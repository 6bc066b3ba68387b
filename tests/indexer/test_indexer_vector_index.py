"""The Faiss wrapper against an exact numpy oracle: recall, save/load, add/remove, selectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chextriev.errors import UnknownNameError
from chextriev.retrieval import exact_knn
from indexer.vector_index import (
    IndexStateError,
    Manifest,
    VectorIndex,
    default_nlist,
    factory_string,
    resolve_index_type,
)


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
    first = index.save(tmp_path, db_state="abc", checkpoint_id="ck")
    expected = index.search(queries, 5)
    loaded = VectorIndex.load(tmp_path)
    got = loaded.search(queries, 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    assert loaded.manifest.db_state == "abc" and loaded.manifest.checkpoint_id == "ck"
    np.testing.assert_array_equal(loaded.faiss_ids(), np.sort(ids))
    # A second save replaces the build; the old folder is gone; no temp files remain.
    loaded.remove(ids[:10])
    second = loaded.save(tmp_path, db_state="def", checkpoint_id="ck")
    assert second.build_id != first.build_id
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [second.build_id]
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert VectorIndex.load(tmp_path).ntotal == len(ids) - 10


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
    (tmp_path / "manifest.json").write_text(json.dumps({"build_id": "x"}))
    with pytest.raises(IndexStateError, match="not a valid"):
        Manifest.read(tmp_path)


def test_empty_index_search(tmp_path):
    index = VectorIndex.build(np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    _scores, ids = index.search(np.ones((2, 8), np.float32), 3)
    assert ids.shape == (2, 3) and (ids == -1).all()
    index.save(tmp_path, db_state="s", checkpoint_id=None)
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
    assert index._gpu_index is not None
    assert recall(found, oracle(base, ids, queries, 10)) >= 0.95
