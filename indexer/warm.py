"""Warming what a reader maps, so that the first searches after a start do not wait on the disk.

A server maps the build's files (index segments, search columns, the vector store's exact
embeddings) and reads them on demand: right after a start on a machine that has not read them
lately, every search faults its pages in from the disk, one at a time (1M images, IVF-flat: p99
491 ms in the first minute, BENCHMARKS.md). :func:`start` hands the files to a background thread
that asks the kernel to read them into the page cache ahead of use, in order of need (the index
segments and columns first, then the exact embeddings an IVF-PQ search re-ranks with):
``posix_fadvise(WILLNEED)`` per chunk, asynchronous readahead that copies nothing into this
process (where the call is missing, the files are read through in chunks instead). Pages are
shared by every worker on the machine, so the second worker's warming is almost free. The
region embeddings (18 x R bytes per image: 18 GB at 1M, R = 1024) are left to be read on demand:
a search result reads ten of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: Bytes asked for at a time (the thread yields the disk between chunks).
CHUNK = 64 << 20


def warm_files(paths: Iterable[Path], chunk: int = CHUNK) -> int:
    """Ask the kernel to read ``paths`` into the page cache, chunk by chunk; the bytes asked for.
    Missing files are skipped."""
    total = 0
    buffer = None
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, chunk):
                length = min(chunk, size - offset)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                else:  # no readahead hint here: read through
                    buffer = buffer or bytearray(chunk)
                    os.preadv(fd, [memoryview(buffer)[:length]], offset)
            total += size
        finally:
            os.close(fd)
    return total


def index_files(index_dir: Path, files: Iterable[str], store_root: Path | None) -> list[Path]:
    """What a search reads, in the order it needs it: the build's files (``files``: segments,
    trained quantizer, column files, relative to ``index_dir``), then the store's exact
    embeddings and keys."""
    out = [Path(index_dir) / name for name in files]
    if store_root is not None:
        out += [Path(store_root) / "embeddings.f32", Path(store_root) / "keys.i64"]
    return out


def start(paths: list[Path], what: str) -> threading.Thread:
    """Warm ``paths`` in a daemon thread (started); logs the bytes and seconds at DEBUG."""

    def run():
        started = time.perf_counter()
        try:
            total = warm_files(paths)
        except OSError as error:  # a file replaced meanwhile: the next build warms its own
            log.debug("warming %s stopped: %s", what, error)
            return
        log.debug("warmed %s: %.2f GB asked for in %.1f s", what, total / 1e9,
                  time.perf_counter() - started)

    thread = threading.Thread(target=run, name=f"warm {what}", daemon=True)
    thread.start()
    return thread


def start_build(index_dir: Path, manifest, store) -> threading.Thread:
    """:func:`start` on what a search of the build of ``manifest`` reads (:func:`index_files`);
    ``store``: the catalog's vector store or None."""
    return start(index_files(index_dir, manifest.files(), None if store is None else store.root),
                 f"index build {manifest.build_id}")
