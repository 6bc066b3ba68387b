"""Durable file writes and file hashes: the one place that knows the temporary-name, fsync,
rename pattern (standard library only: no torch, no numpy).

A file written here is complete or absent: the bytes go to ``<name>.tmp-<random>`` next to the
target, are fsynced, and the temporary file is renamed over the target (atomic on POSIX); on
failure the temporary file is removed. ``dir_sync=True`` also fsyncs the folder, so the rename
itself survives a power cut (a commit point such as an index manifest).

>>> with atomic_open(path, "w", dir_sync=True) as handle:   # doctest: +SKIP
...     handle.write(text)
>>> atomic_write(path, data)                                # doctest: +SKIP
>>> atomic_path(path, lambda tmp: faiss.write_index(index, str(tmp)))   # doctest: +SKIP
>>> sha256_file(path)                                       # doctest: +SKIP

Every writer of the tree uses it: the index files (segments, manifest, vector store, previews,
bundle copies, distributed shards and work lists, the writer lock), checkpoints, detector and
HAM weights, training shards and the feature cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: Bytes read at a time when hashing a file.
HASH_CHUNK = 1 << 22


def tmp_name(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (``<name>.tmp-<8 hex>``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")


def is_tmp_name(path: str | Path) -> bool:
    """Whether ``path`` is a temporary name made by :func:`tmp_name` (left by a killed writer)."""
    return ".tmp-" in Path(path).name


def fsync_handle(handle: IO[Any]) -> None:
    """Flush an open file's buffers and fsync it."""
    handle.flush()
    os.fsync(handle.fileno())


def fsync_file(path: str | Path) -> None:
    """fsync a file that is not open here."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | Path) -> None:
    """fsync a folder (makes the renames inside it durable); a no-op where folders cannot be
    opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse to fsync a folder
        pass
    finally:
        os.close(fd)


def commit_file(tmp: str | Path, path: str | Path, *, dir_sync: bool = False) -> None:
    """fsync the complete file ``tmp`` and rename it to ``path`` (atomic)."""
    fsync_file(tmp)
    os.replace(tmp, path)
    if dir_sync:
        fsync_dir(Path(path).parent)


def atomic_path(path: str | Path, write: Callable[[Path], Any], *, dir_sync: bool = False) -> Path:
    """Let ``write(tmp)`` create the file ``tmp`` (a library that writes to a path itself:
    ``faiss.write_index``, ``np.savez``, ``torch.save``), then commit it as ``path``."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        write(tmp)
        commit_file(tmp, path, dir_sync=dir_sync)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, dir_sync: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``mode`` ``"wb"`` or ``"w"``); when the block ends
    without an exception it is fsynced and renamed to ``path``, else removed."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            fsync_handle(handle)
        os.replace(tmp, path)
        if dir_sync:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str, *, dir_sync: bool = False) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb", dir_sync=dir_sync) as handle:
        handle.write(data)
    return Path(path)


def atomic_copy(source: str | Path, path: str | Path, *, dir_sync: bool = False) -> Path:
    """Copy ``source`` to ``path`` atomically (a reader never sees a partial copy)."""
    return atomic_path(path, lambda tmp: shutil.copyfile(source, tmp), dir_sync=dir_sync)


def sha256_file(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """The sha256 (hex) of a file, read in chunks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
