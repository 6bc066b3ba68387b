"""Warming a build's mapped files at open (``indexer/warm.py``): the files a search reads, in
order, are asked into the page cache by a background thread; a catalog opened with ``warm=True``
(the server's) does it for every build it loads."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time

import numpy as np
import pytest

from indexer import warm

PAGE = mmap.PAGESIZE


def resident_fraction(path) -> float:
    """Share of ``path``'s pages in the page cache (``mincore`` over a read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    size = os.path.getsize(path)
    pages = (size + PAGE - 1) // PAGE
    vector = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vector) / pages


def evicted(path) -> bool:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return resident_fraction(path) < 0.5


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_warm_files_brings_evicted_files_into_the_page_cache(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(np.random.default_rng(i).bytes(3 * warm.CHUNK // 8 + 12345))
        paths.append(path)
    if not all(evicted(p) for p in paths):
        pytest.skip("this file system keeps its pages (tmpfs?): nothing to warm")
    assert warm.warm_files(paths + [tmp_path / "missing.bin"], chunk=1 << 20) == sum(p.stat().st_size for p in paths)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and min(resident_fraction(p) for p in paths) < 0.95:
        time.sleep(0.1)
    assert min(resident_fraction(p) for p in paths) >= 0.95


def test_the_build_files_in_the_order_a_search_needs_them(tmp_path):
    files = ["segments/trained-x.faiss", "segments/a.faiss", "segments/a.ids.npy", "columns/s/ids.i64"]
    paths = warm.index_files(tmp_path, files, tmp_path / "store")
    assert paths == [tmp_path / f for f in files] + [tmp_path / "store" / "embeddings.f32",
                                                     tmp_path / "store" / "keys.i64"]
    assert warm.index_files(tmp_path, files, None) == [tmp_path / f for f in files]


def test_a_catalog_opened_to_warm_reads_its_build_ahead(tmp_path, monkeypatch):
    from indexer_fakes import clustered_vectors, write_embedded

    from indexer.catalog import Catalog

    index_dir = tmp_path / "idx"
    write_embedded(index_dir, clustered_vectors(600, dim=16, seed=2))
    started: list[list] = []

    def record(paths, what):
        started.append(list(paths))
        thread = threading.Thread(target=warm.warm_files, args=(paths,))
        thread.start()
        return thread

    monkeypatch.setattr(warm, "start", record)
    Catalog.open(None, index_dir).close()
    assert started == []  # only when asked (the server)
    catalog = Catalog.open(None, index_dir, warm=True)
    manifest_files = [index_dir / f for f in catalog.manifest.files()]
    assert started and started[0][:len(manifest_files)] == manifest_files
    assert index_dir / "store" / "embeddings.f32" in started[0]
    assert all(p.is_file() for p in started[0])
    catalog.close()
