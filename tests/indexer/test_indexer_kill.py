"""Real indexing subprocesses killed with SIGKILL, then rerun: mid-run (inside batches) and
inside an incremental index save. Afterwards every image is in the catalog exactly once and
catalog and index agree (verify checks the payload)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from child_env import child_env
from indexer_fakes import FakeEmbedder, open_sessions, write_png
from sqlalchemy import func, select

from indexer.catalog import Catalog
from indexer.db import Image, Source, default_db_url
from indexer.engine import make_engine, make_sessionmaker
from indexer.pipeline import run_index
from indexer.verify import verify

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import chextriev.files as files
    from indexer.pipeline import run_index
    from indexer_fakes import FakeEmbedder
    if {slow_save!r}:
        # Stall inside every incremental save, after the new segment's temporary file is written
        # and before it is committed (the parent kills us there).
        commit = files.commit_file
        def stalled(tmp, path, **options):
            if (Path({index_dir!r}) / "manifest.json").exists() and Path(path).suffix == ".faiss":
                time.sleep(60)
            commit(tmp, path, **options)
        files.commit_file = stalled
    policy = None
    if {key!r}:
        from chextriev.io.deid import Deidentifier
        from indexer.decode import IngestPolicy
        policy = IngestPolicy(Deidentifier({key!r}))
    run_index({root!r}, embedder=FakeEmbedder(delay={delay!r}), index_dir={index_dir!r},
              db_url={db_url!r}, batch_size=2, checkpoint_every=1, progress=False, policy=policy)
""")


def _archive(root: Path, n: int) -> None:
    for i in range(n):
        write_png(root / f"d{i % 4}" / f"img{i:03d}.png", i)


def _start(tmp_path, root, index_dir, db_url, *, slow_save=False, delay=0.25, key=None):
    script = SCRIPT.format(repo=str(REPO), here=str(Path(__file__).parent), root=str(root),
                           index_dir=str(index_dir), db_url=db_url, slow_save=slow_save,
                           delay=delay, key=key)
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 - closed by the caller's process end
    return subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, env=child_env())


def _count_images(index_dir, db_url) -> int:
    try:
        engine = make_engine(db_url or default_db_url(index_dir), create=False)
        with make_sessionmaker(engine)() as s:
            return s.scalar(select(func.count(Image.id)))
    except Exception:  # noqa: BLE001 - the catalog may not exist yet
        return 0


def _check_after_rerun(index_dir, db_url, n, summary) -> None:
    sessions = open_sessions(index_dir, db_url)
    with sessions() as s:
        assert s.scalar(select(func.count(Image.id))) == n
        assert s.scalar(select(func.count(Source.id))) == n
        assert s.scalar(select(func.count(func.distinct(Image.content_hash)))) == n
        assert s.scalar(select(func.count(func.distinct(Image.vector_slot)))) == n
    assert summary.indexed + summary.unchanged == n
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(db_url, index_dir)
    ids = catalog.index.faiss_ids()
    assert len(ids) == n and len(np.unique(ids)) == n
    hits = catalog.search(catalog.vectors(ids), k=1)
    assert [h[0].image_id for h in hits] == ids.tolist()


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _policy(key):
    from chextriev.io.deid import Deidentifier
    from indexer.decode import IngestPolicy

    return IngestPolicy(Deidentifier(key)) if key else None


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, b"kill-test-key"], ids=["clear", "pseudonymised"])
def test_sigkill_mid_run_then_rerun(tmp_path, catalog_url, key):
    """Killed mid-run, then rerun; with --pseudonymise the ledger's keyed hashes are what
    the rerun finds, and no path is stored."""
    root, index_dir, n = tmp_path / "archive", tmp_path / "idx", 24
    _archive(root, n)
    proc = _start(tmp_path, root, index_dir, catalog_url, key=key)
    deadline = time.time() + 90
    count = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        count = _count_images(index_dir, catalog_url)
        if count >= 6:
            break
    assert proc.poll() is None, (tmp_path / "child.log").read_text()[-2000:]
    _kill(proc)
    assert 0 < count < n  # killed mid-run
    summary = run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=catalog_url,
                        batch_size=4, progress=False, policy=_policy(key))
    _check_after_rerun(index_dir, catalog_url, n, summary)
    with open_sessions(index_dir, catalog_url)() as s:
        paths = s.scalars(select(Source.path)).all()
    assert all(p.startswith("pseudonym:") != (key is None) for p in paths)


@pytest.mark.slow
def test_sigkill_inside_incremental_save_then_rerun(tmp_path, catalog_url):
    root, index_dir, n = tmp_path / "archive", tmp_path / "idx", 12
    _archive(root, n)
    proc = _start(tmp_path, root, index_dir, catalog_url, slow_save=True, delay=0.0)
    deadline = time.time() + 90
    stalled = []
    while time.time() < deadline and proc.poll() is None and not stalled:
        time.sleep(0.05)
        if (index_dir / "manifest.json").exists():
            stalled = list((index_dir / "segments").glob("*.faiss.tmp-*"))
    assert stalled and proc.poll() is None, (tmp_path / "child.log").read_text()[-2000:]
    before = (index_dir / "manifest.json").read_text()
    _kill(proc)
    # The manifest still names the last committed build, whose files are all there.
    assert (index_dir / "manifest.json").read_text() == before
    sessions = open_sessions(index_dir, catalog_url)
    problems = verify(sessions, index_dir)
    assert problems and all("generation" in p or "missing from the index" in p
                            for p in problems), problems
    summary = run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=catalog_url,
                        batch_size=4, progress=False)
    _check_after_rerun(index_dir, catalog_url, n, summary)
    assert not list((index_dir / "segments").glob("*.tmp-*"))  # the torn write was swept
