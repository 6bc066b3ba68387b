"""chextriev.files: complete-or-absent writes and chunked hashes (the one copy of the pattern)."""

from __future__ import annotations

import hashlib

import pytest

from chextriev import files


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    files.atomic_write(path, "first", dir_sync=True)
    files.atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "data.bin"
    files.atomic_write(path, b"old")
    with pytest.raises(RuntimeError, match="disk gone"), files.atomic_open(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk gone")

    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_path(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    with pytest.raises(ValueError, match="new file"), files.atomic_open(path, "ab"):
        pass


def test_copy_hash_and_temporary_names(tmp_path):
    source = tmp_path / "weights.ckpt"
    source.write_bytes(bytes(range(256)) * 5000)
    copy = files.atomic_copy(source, tmp_path / "bundle.ckpt")
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    assert files.sha256_file(copy) == expected == files.sha256_file(source, chunk=1000)
    tmp = files.tmp_name(copy)
    assert tmp.parent == copy.parent and files.is_tmp_name(tmp) and not files.is_tmp_name(copy)
