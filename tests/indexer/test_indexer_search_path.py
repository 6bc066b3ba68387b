"""Where a search runs: the GPU route of ``VectorIndex.search`` checked on the CPU, and small
searches on one OpenMP thread.

No GPU can run here, so the GPU copy of a segment is stood for by :class:`GpuCopy`: a CPU clone
of the segment's Faiss index searched the way a Faiss GPU IVF index is (its own coarse
quantizer, ``nprobe`` from ``SearchParametersIVF``, no ID selector), recording each call. The
routing under test is the project's: which segments go to the copy, with which parameters, and
what happens when the GPU fails. (``test_indexer_vector_index.py::test_gpu_build_and_search``
runs the real thing where Faiss sees a GPU.)
"""

from __future__ import annotations

import logging
import threading

import faiss
import numpy as np
import pytest

from indexer import faiss_factory
from indexer.vector_index import VectorIndex


class GpuCopy:
    def __init__(self, index, calls: list):
        self.index = faiss.clone_index(index)
        self.calls = calls

    def search(self, queries, k, params=None):
        if params is not None and params.sel is not None:
            raise RuntimeError("GPU index: IDSelector not supported")
        self.calls.append((len(queries), k, None if params is None else params.nprobe))
        return self.index.search(queries, k, params=params)


def unit(n, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def two_segments(kind: str, device: str) -> VectorIndex:
    base = unit(3000)
    index = VectorIndex.build(np.arange(2000, dtype=np.int64) * 3, base[:2000], index_type=kind,
                              device=device, nprobe=4, expected=3000)
    index.add(np.arange(2000, 3000, dtype=np.int64) * 3, base[2000:])
    assert len(index.segments) == 2
    return index


@pytest.fixture()
def gpu(monkeypatch):
    """Faiss 'sees' a GPU; ``to_gpu`` makes :class:`GpuCopy` copies; returns the calls made."""
    calls: list = []
    copies: list = []

    def to_gpu(index):
        copies.append(index)
        return GpuCopy(index, calls)

    monkeypatch.setattr(faiss_factory, "gpu_available", lambda device: device != "cpu")
    monkeypatch.setattr(faiss_factory, "to_gpu", to_gpu)
    return calls, copies


@pytest.mark.parametrize("kind", ["ivf-flat", "flat"])
def test_unfiltered_searches_run_on_the_gpu_copies_with_the_requested_nprobe(gpu, kind):
    calls, copies = gpu
    queries = unit(7, seed=1)
    on_gpu, on_cpu = two_segments(kind, "cuda"), two_segments(kind, "cpu")
    for nprobe in (2, 6):
        calls.clear()
        scores, ids = on_gpu.search(queries, 10, nprobe=nprobe)
        expected = (None if kind == "flat" else nprobe)
        assert calls == [(7, 10, expected), (7, 10, expected)]  # each segment, once, on its copy
        cpu_scores, cpu_ids = on_cpu.search(queries, 10, nprobe=nprobe)
        np.testing.assert_array_equal(ids, cpu_ids)
        np.testing.assert_allclose(scores, cpu_scores, rtol=1e-5, atol=1e-6)
    segment_copies = [c for c in copies if not isinstance(c, faiss.IndexFlatIP)]  # not k-means'
    assert len(segment_copies) == 2  # one copy per segment, made by the first search, kept
    assert all(s.gpu is not None for s in on_gpu.segments)


def test_filtered_searches_stay_on_the_cpu(gpu):
    calls, _ = gpu
    index = two_segments("ivf-flat", "cuda")
    index.BRUTE_FORCE_MAX = 10  # a large allowed set: Faiss's ID selector, which GPUs lack
    allowed = np.arange(0, 3000, 2, dtype=np.int64) * 3
    _, ids = index.search(unit(5, seed=2), 10, allowed_ids=allowed)
    assert calls == [] and np.isin(ids[ids >= 0], allowed).all() and (ids >= 0).all()


def test_a_cpu_device_never_copies_to_the_gpu(gpu):
    _, copies = gpu
    two_segments("ivf-flat", "cpu").search(unit(3, seed=3), 5)
    assert copies == []  # neither k-means nor the segments


def test_a_failed_gpu_copy_falls_back_to_the_cpu_once(monkeypatch, caplog):
    tries = []

    def broken(index):
        tries.append(index)
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(faiss_factory, "gpu_available", lambda device: device != "cpu")
    monkeypatch.setattr(faiss_factory, "to_gpu", broken)
    index, reference = two_segments("ivf-flat", "cuda"), two_segments("ivf-flat", "cpu")
    queries = unit(4, seed=4)
    with caplog.at_level(logging.INFO, logger="indexer.vector_index"):
        for _ in range(3):
            np.testing.assert_array_equal(index.search(queries, 10)[1], reference.search(queries, 10)[1])
    assert len([t for t in tries if not isinstance(t, faiss.IndexFlatIP)]) == 1  # not k-means'
    assert [r.message for r in caplog.records if "GPU" in r.message] == [
        "cannot copy the index to the GPU (out of GPU memory): searching on the CPU"]


def test_a_failed_gpu_search_falls_back_to_the_cpu(gpu, monkeypatch):
    def fails(self, queries, k, params=None):
        raise RuntimeError("CUDA error")

    monkeypatch.setattr(GpuCopy, "search", fails)
    index, reference = two_segments("ivf-flat", "cuda"), two_segments("ivf-flat", "cpu")
    queries = unit(4, seed=5)
    np.testing.assert_array_equal(index.search(queries, 10)[1], reference.search(queries, 10)[1])
    assert index.gpu_copy(index.segments[0]) is None  # the CPU from then on


def test_small_searches_run_on_one_openmp_thread_of_the_calling_thread_only():
    if faiss.omp_get_max_threads() < 2:
        faiss.omp_set_num_threads(2)
    before = faiss.omp_get_max_threads()
    seen = {}
    with faiss_factory.search_threads(1):
        seen["inside"] = faiss.omp_get_max_threads()
        other = threading.Thread(target=lambda: seen.setdefault("other", faiss.omp_get_max_threads()))
        other.start()
        other.join()
    assert seen["inside"] == 1 and seen["other"] >= 2 and faiss.omp_get_max_threads() == before
    with faiss_factory.search_threads(faiss_factory.ONE_THREAD_QUERIES + 1):
        assert faiss.omp_get_max_threads() == before  # batches keep every thread


def test_the_index_command_defaults_to_the_build_nprobe():
    import argparse

    from indexer import cli

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    cli.register(commands)
    assert commands.choices["index"]._option_string_actions["--nprobe"].default == faiss_factory.DEFAULT_NPROBE
