"""One writer per catalog, with real second processes: a second run names the holder and exits
non-zero, or waits with --wait; a lock left by a killed run is recovered without cleanup; a
save never deletes the files the manifest names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from child_env import child_env
from indexer_fakes import FakeEmbedder, open_sessions, write_png

from indexer.catalog import Catalog
from indexer.lock import CatalogLock, LockHeldError, lock_holder
from indexer.pipeline import run_index
from indexer.verify import verify

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from indexer.pipeline import run_index
    from indexer_fakes import FakeEmbedder

    class Gated(FakeEmbedder):  # holds the lock until the test creates the gate file
        def __call__(self, images, boxes=None):
            deadline = time.time() + 120
            while not Path({gate!r}).exists() and time.time() < deadline:
                time.sleep(0.05)
            return super().__call__(images, boxes=boxes)

    run_index({root!r}, embedder=Gated(), index_dir={index_dir!r}, db_url={db_url!r},
              batch_size=2, progress=False)
    print("DONE", flush=True)
""")


def _holder(tmp_path, root, index_dir, db_url):
    script = HOLDER.format(repo=str(REPO), here=str(Path(__file__).parent), root=str(root),
                           index_dir=str(index_dir), db_url=db_url, gate=str(tmp_path / "gate"))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=child_env(),
                            stderr=subprocess.PIPE, text=True)


def _wait_for_lock(index_dir, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        holder = lock_holder(index_dir)
        if holder and holder.get("pid") == proc.pid:
            return holder
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def _archive(root, n=16):
    for i in range(n):
        write_png(root / f"img{i:03d}.png", i)


@pytest.mark.slow
def test_two_concurrent_runs(tmp_path, catalog_url):
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    _archive(root)
    first = _holder(tmp_path, root, index_dir, catalog_url)
    try:
        holder = _wait_for_lock(index_dir, first)
        assert holder["host"] == socket.gethostname()
        # A second run through the CLI (a real second process): refused, holder named.
        command = [sys.executable, "-m", "chextriev_cli.main", "index", "repair", "--index-dir",
                   str(index_dir)] + (["--db", catalog_url] if catalog_url else [])
        refused = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO,
                                 check=False)
        assert refused.returncode != 0
        assert f"pid {first.pid}" in refused.stderr and socket.gethostname() in refused.stderr
        assert "--wait" in refused.stderr and "Traceback" not in refused.stderr
        # In this process too (same check through the API): the typed error.
        with pytest.raises(LockHeldError, match=f"pid {first.pid}"):
            run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=catalog_url,
                      progress=False)
        # With --wait it queues behind the first run and then finds nothing left to do.
        (tmp_path / "gate").touch()
        summary = run_index(root, embedder=FakeEmbedder(), index_dir=index_dir,
                            db_url=catalog_url, progress=False, wait=120)
        assert first.wait(timeout=60) == 0
        assert summary.indexed == 0 and summary.unchanged == 16
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert verify(open_sessions(index_dir, catalog_url), index_dir) == []
    assert Catalog.open(catalog_url, index_dir).size == 16


@pytest.mark.slow
def test_lock_of_a_killed_run_is_recovered(tmp_path, catalog_url):
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    _archive(root, 10)
    first = _holder(tmp_path, root, index_dir, catalog_url)
    _wait_for_lock(index_dir, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert lock_holder(index_dir)["pid"] == first.pid  # the stale record is still there ...
    summary = run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=catalog_url,
                        progress=False)  # ... but the lock is free: no --wait, no cleanup
    assert summary.indexed + summary.unchanged == 10
    assert verify(open_sessions(index_dir, catalog_url), index_dir) == []


def test_waiting_gives_up_after_the_time_given(tmp_path):
    index_dir = tmp_path / "idx"
    with CatalogLock(index_dir):
        started = time.monotonic()
        with pytest.raises(LockHeldError, match=r"after waiting \d+ s"):
            CatalogLock(index_dir, wait=0.6).acquire()
        assert 0.5 < time.monotonic() - started < 5
    with CatalogLock(index_dir, wait=0.1):  # released: free again
        pass


def test_postgres_lock_spans_index_folders(tmp_path, postgres_url):
    """Two index folders, one PostgreSQL catalog: the advisory lock still excludes."""
    from indexer.engine import make_engine

    engine = make_engine(postgres_url)
    with (CatalogLock(tmp_path / "a", engine=engine, db_url=postgres_url),
          pytest.raises(LockHeldError, match=f"pid {os.getpid()}")):
        CatalogLock(tmp_path / "b", engine=engine, db_url=postgres_url).acquire()
    with CatalogLock(tmp_path / "b", engine=engine, db_url=postgres_url):
        pass
    engine.dispose()


def test_save_never_deletes_what_the_manifest_names(tmp_path):
    """An old writer saving after a newer manifest was committed (by a process that broke the
    lock, or a restored copy) must not sweep the newer build's files."""
    import numpy as np

    from indexer.manifest import Manifest, sweep
    from indexer.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    a = VectorIndex.build(np.arange(10), rng.standard_normal((10, 8)), index_type="flat")
    a.save(tmp_path, checkpoint_id=None)
    b = VectorIndex.build(np.arange(20), rng.standard_normal((20, 8)), index_type="flat")
    b.save(tmp_path, checkpoint_id=None)
    b.add(np.arange(20, 25), rng.standard_normal((5, 8)))
    named = b.save(tmp_path, checkpoint_id=None)
    sweep(tmp_path)  # what any process may run at any time
    for rel in Manifest.read(tmp_path).files():
        assert (tmp_path / rel).is_file(), rel
    assert set(named.files()) == set(Manifest.read(tmp_path).files())
    assert VectorIndex.load(tmp_path).ntotal == 25


def test_lock_record_masks_passwords(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/chextriev", "index", "--db", "postgresql://u:s3cret@h/db"])
    with CatalogLock(tmp_path):
        holder = lock_holder(tmp_path)
    assert "s3cret" not in holder["command"] and "postgresql://u:***@h/db" in holder["command"]
    assert holder["pid"] == os.getpid()
