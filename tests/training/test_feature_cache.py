"""The feature cache's content-hash memo (``CACHE_DIR/content-hashes.sqlite``): a second key
computation only stats the files, a changed file is rehashed, a corrupt memo is recreated, and
two caches on one directory share it. Tiny files in tmp_path, no model."""

from __future__ import annotations

import logging
import os
import time

import pytest

from chextriev.training import feature_cache
from chextriev.training.feature_cache import MEMO_NAME, FeatureCache, content_hash

OLD = time.time_ns() - 3600 * 10**9  # an hour ago: past the racy window


def write(path, data: bytes, mtime_ns: int = OLD):
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return [write(folder / f"{i}.jpg", f"image {i}".encode() * 10) for i in range(5)]


@pytest.fixture
def count_reads(monkeypatch):
    """Counts the file reads of ``content_hash`` (the memo calls it for every miss)."""
    calls = []
    real = feature_cache.content_hash

    def counted(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(feature_cache, "content_hash", counted)
    return calls


def test_feature_cache_memo_second_call_reads_no_file(files, tmp_path, count_reads, caplog):
    cache = FeatureCache(tmp_path / "cache")
    first = cache.content_hashes(files)
    assert first == [content_hash(p) for p in files]
    assert len(count_reads) == 5 and (cache.hash_hits, cache.hash_misses) == (0, 5)
    assert (tmp_path / "cache" / MEMO_NAME).is_file()
    count_reads.clear()
    with caplog.at_level(logging.INFO, logger=feature_cache.__name__):
        second = cache.content_hashes([str(p) for p in files])  # str or Path: same resolved key
    assert second == first and count_reads == []
    assert (cache.hash_hits, cache.hash_misses) == (5, 5)
    assert [r.getMessage() for r in caplog.records if "memo" in r.getMessage()][-1].endswith("5 hits, 0 hashed")


def test_feature_cache_memo_rehashes_changed_files(files, tmp_path, count_reads):
    cache = FeatureCache(tmp_path / "cache")
    before = cache.content_hashes(files)
    write(files[0], b"other bytes, other size")
    write(files[1], b"IMAGE 1" * 10, mtime_ns=OLD + 10**9)  # same size, new mtime
    count_reads.clear()
    after = cache.content_hashes(files)
    assert len(count_reads) == 2
    assert after[0] == content_hash(b"other bytes, other size") != before[0]
    assert after[1] == content_hash(b"IMAGE 1" * 10) != before[1]
    assert after[2:] == before[2:]


def test_feature_cache_memo_skips_bytes_and_fresh_files(files, tmp_path, count_reads):
    cache = FeatureCache(tmp_path / "cache")
    fresh = tmp_path / "fresh.png"
    fresh.write_bytes(b"just written")  # mtime now: within the racy window, never memoised
    sources = [b"raw bytes", fresh, files[0]]
    assert cache.content_hashes(sources) == [content_hash(b"raw bytes"), content_hash(fresh), content_hash(files[0])]
    count_reads.clear()
    cache.content_hashes(sources)
    assert count_reads[1:] == [str(fresh.resolve())] and count_reads[0] == b"raw bytes"
    assert (cache.hash_hits, cache.hash_misses) == (1, 3)  # bytes are not counted


def test_feature_cache_memo_corrupt_file_recovered(files, tmp_path, caplog):
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / MEMO_NAME).write_bytes(b"not a database" * 100)
    cache = FeatureCache(directory)
    with caplog.at_level(logging.WARNING, logger=feature_cache.__name__):
        assert cache.content_hashes(files) == [content_hash(p) for p in files]
    assert any("unusable" in r.getMessage() for r in caplog.records)
    assert cache.content_hashes(files) == [content_hash(p) for p in files]
    assert (cache.hash_hits, cache.hash_misses) == (5, 5)  # recreated and filled on the first call


def test_feature_cache_memo_shared_between_caches(files, tmp_path, count_reads):
    first, second = FeatureCache(tmp_path / "cache"), FeatureCache(tmp_path / "cache")
    expected = first.content_hashes(files[:3])
    count_reads.clear()
    assert second.content_hashes(files)[:3] == expected
    assert len(count_reads) == 2 and (second.hash_hits, second.hash_misses) == (3, 2)
    count_reads.clear()
    first.content_hashes(files)
    assert count_reads == [] and first.hash_hits == 5


def test_feature_cache_memo_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        FeatureCache(tmp_path / "cache").content_hashes([tmp_path / "absent.jpg"])
