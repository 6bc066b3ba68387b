"""A real indexing subprocess killed with SIGKILL mid-run, then rerun: every image exactly once,
database and index agree."""

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
from indexer_fakes import FakeEmbedder, write_png
from sqlalchemy import func, select

from indexer.catalog import Catalog
from indexer.db import Image, Source, default_db_url, make_engine, make_sessionmaker
from indexer.pipeline import run_index
from indexer.sync import verify

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {here!r}]
    from indexer.pipeline import run_index
    from indexer_fakes import FakeEmbedder
    run_index({root!r}, embedder=FakeEmbedder(delay=0.25), index_dir={index_dir!r}, batch_size=2,
              checkpoint_every=1, progress=False)
""")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tmp_path):
    root = tmp_path / "archive"
    n = 24
    for i in range(n):
        write_png(root / f"d{i % 4}" / f"img{i:03d}.png", i)
    index_dir = tmp_path / "idx"
    script = SCRIPT.format(repo=str(REPO), here=str(Path(__file__).parent), root=str(root),
                           index_dir=str(index_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    db = index_dir / "catalog.sqlite"
    deadline = time.time() + 60
    count = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if db.exists():
            try:
                with make_sessionmaker(make_engine(default_db_url(index_dir), create=False))() as s:
                    count = s.scalar(select(func.count(Image.id)))
            except Exception:  # noqa: BLE001 - tables may not exist yet
                count = 0
            if count >= 6:
                break
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < count < n  # killed mid-run
    summary = run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, batch_size=4,
                        progress=False)
    sessions = make_sessionmaker(make_engine(default_db_url(index_dir)))
    with sessions() as s:
        assert s.scalar(select(func.count(Image.id))) == n
        assert s.scalar(select(func.count(Source.id))) == n
        assert s.scalar(select(func.count(func.distinct(Image.content_hash)))) == n
    assert summary.indexed + summary.unchanged == n
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(None, index_dir)
    ids = catalog.index.faiss_ids()
    assert len(ids) == n and len(np.unique(ids)) == n
    hits = catalog.search(catalog.vectors(ids), k=1)
    assert [h[0].image_id for h in hits] == ids.tolist()
