"""An index run that loses its catalog database or fills its disk: it stops with one line (exit
2, no traceback) naming the database or the folder, what it committed and what to do, and the
rerun carries on with nothing lost (`index verify` agrees). The catalog's reads survive a
PostgreSQL restart (dropped connections made again) and say plainly when it is down. The
server's side is tests/server/test_server_outage.py.

The PostgreSQL cases run on a server of their own (restarted, stopped, started: 127.0.0.1
only). The full-disk case writes the index into a real 3 MB tmpfs (root and a kernel that
allows the mount: as here and in CI, where ``CHEXTRIEV_REQUIRE_SMALL_FS=1`` turns the skip into
a failure); ENOSPC is never faked."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, write_png
from PIL import Image as PILImage
from postgres_fixtures import pg_ctl
from sqlalchemy import func, select

from indexer.catalog import Catalog, CatalogUnavailableError
from indexer.db import Image
from indexer.engine import make_engine, make_sessionmaker
from indexer.verify import verify

PASSWORD = "pw-never-shown-1234"


def _archive(root: Path, n: int) -> list[Path]:
    return [write_png(root / f"d{i % 3}" / f"img{i:03d}.png", i) for i in range(n)]


def _noisy_archive(root: Path, n: int, size: int = 512) -> None:
    """Pixel noise: each preview JPEG is about 150 kB, so a few batches fill 3 MB."""
    root.mkdir(parents=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (size, size), np.uint8)
        PILImage.fromarray(pixels, mode="L").save(root / f"scan{i:03d}.png")


def _main(monkeypatch, embedder, *argv: str) -> int:
    """``chextriev ...`` (the console script's main) with ``embedder`` for the model."""
    from chextriev_cli.main import main

    monkeypatch.setattr("indexer.embedder.ModelEmbedder", lambda *a, **k: embedder)
    return main(list(argv))


def _index_args(root, index_dir, checkpoint, *extra: str) -> list[str]:
    return ["index", "--data", str(root), "--index-dir", str(index_dir), "--checkpoint",
            str(checkpoint), "--device", "cpu", "--no-progress", "--workers", "0",
            "--batch-size", "4", "--checkpoint-every", "1", *extra]


def _one_line_error(caplog, capsys) -> str:
    """The error the command logged: exactly one line, no traceback anywhere."""
    err = capsys.readouterr().err
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "\n" not in message and "Traceback" not in err + caplog.text, err[-2000:]
    return message


def _count(url: str, index_dir: Path) -> int:
    engine = make_engine(url or f"sqlite:///{index_dir / 'catalog.sqlite'}", create=False)
    try:
        with make_sessionmaker(engine)() as session:
            return session.scalar(select(func.count(Image.id)).where(Image.status == "indexed"))
    finally:
        engine.dispose()


class StopsPostgres(FakeEmbedder):
    """Stops the PostgreSQL server once the second batch is embedded (mid-run)."""

    def __init__(self, server, options):
        super().__init__()
        self.server, self.options = server, options

    def __call__(self, images, boxes=None):
        out = super().__call__(images, boxes)
        if self.calls == 2:
            pg_ctl(self.server, self.options, "stop")
        return out


def test_catalog_reads_survive_a_postgres_restart_and_say_when_it_is_down(own_postgres, tmp_path):
    from indexer.pipeline import run_index

    server, options = own_postgres
    url = server.create_database().replace(f"{server.user}@", f"{server.user}:{PASSWORD}@")
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    _archive(root, 6)
    run_index(root, embedder=FakeEmbedder(), index_dir=index_dir, db_url=url, batch_size=4,
              progress=False)
    catalog = Catalog.open(url, index_dir)
    try:
        ids = catalog.index.ids.tolist()
        assert set(catalog.status(ids).values()) == {"indexed"}  # pooled connections now
        pg_ctl(server, options, "restart")  # every pooled connection is dead after this
        assert set(catalog.status(ids).values()) == {"indexed"}  # made again, no error
        assert len(catalog.images(ids)) == len(ids)
        pg_ctl(server, options, "stop")
        for read in (lambda: catalog.status(ids), lambda: catalog.images(ids), catalog.ping):
            with pytest.raises(CatalogUnavailableError) as err:
                read()
            message = str(err.value)
            assert f'database "{url.rsplit("/", 1)[1]}" on 127.0.0.1:{server.port}' in message
            assert PASSWORD not in message and "\n" not in message and err.value.retry_after > 0
        pg_ctl(server, options, "start")
        assert set(catalog.status(ids).values()) == {"indexed"}  # back, without reopening
        catalog.ping()
    finally:
        catalog.close()


def test_index_run_stops_cleanly_when_postgres_goes_away_and_resumes(
        own_postgres, tmp_path, monkeypatch, caplog, capsys):
    server, options = own_postgres
    url = server.create_database()
    root, index_dir = tmp_path / "archive", tmp_path / "idx"
    n = 14
    _archive(root, n)
    checkpoint = tmp_path / "fake.ckpt"
    checkpoint.write_bytes(b"")
    args = _index_args(root, index_dir, checkpoint, "--db", url)
    caplog.set_level(logging.INFO)
    assert _main(monkeypatch, StopsPostgres(server, options), *args) == 2
    message = _one_line_error(caplog, capsys)
    database = url.rsplit("/", 1)[1]
    assert f'database "{database}" on 127.0.0.1:{server.port}' in message
    assert "this run committed 4 new image(s)" in message and "rerun the same command" in message
    pg_ctl(server, options, "start")
    assert _count(url, index_dir) == 4  # the first batch, committed before the database went
    caplog.clear()
    assert _main(monkeypatch, FakeEmbedder(), *args) == 0
    assert f"indexed {n - 4}, unchanged 4" in capsys.readouterr().out
    assert _count(url, index_dir) == n
    engine = make_engine(url)
    try:
        assert verify(make_sessionmaker(engine), index_dir) == []
    finally:
        engine.dispose()
    # a run that starts while the database is down says so too, before loading anything
    pg_ctl(server, options, "stop")
    caplog.clear()
    assert _main(monkeypatch, FakeEmbedder(), *args) == 2
    assert f'database "{database}"' in _one_line_error(caplog, capsys)


def _small_fs(folder: Path, size: str) -> None:
    """Mount a size-limited tmpfs at ``folder`` (skips with the reason when this machine does
    not allow it, unless CHEXTRIEV_REQUIRE_SMALL_FS=1)."""
    folder.mkdir(parents=True)
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a small tmpfs needs root"
    else:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                                 str(folder)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = f"this kernel refuses a tmpfs mount: {result.stderr.strip()}"
    if reason:
        if os.environ.get("CHEXTRIEV_REQUIRE_SMALL_FS") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_SMALL_FS=1 but {reason}")
        pytest.skip(f"full-disk test skipped: {reason}")


def test_index_run_into_a_full_disk_stops_with_one_line_then_the_rerun_finishes(
        tmp_path, monkeypatch, caplog, capsys):
    small = tmp_path / f"small-{uuid.uuid4().hex[:8]}"
    _small_fs(small, "3m")
    try:
        root, index_dir = tmp_path / "archive", small / "idx"
        n = 40
        _noisy_archive(root, n)
        checkpoint = tmp_path / "fake.ckpt"
        checkpoint.write_bytes(b"")
        args = _index_args(root, index_dir, checkpoint)
        caplog.set_level(logging.INFO)
        assert _main(monkeypatch, FakeEmbedder(), *args) == 2
        message = _one_line_error(caplog, capsys)
        committed = _count(None, index_dir)
        assert 0 < committed < n
        assert message.startswith(f"no space left on the file system holding {index_dir.resolve()}")
        assert f"this run committed {committed} new image(s)" in message
        assert "free space there" in message and "rerun the same command" in message
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        caplog.clear()
        assert _main(monkeypatch, FakeEmbedder(), *args) == 0
        assert f"indexed {n - committed}, unchanged {committed}" in capsys.readouterr().out
        assert _count(None, index_dir) == n
        assert _main(monkeypatch, FakeEmbedder(), "index", "verify", "--index-dir",
                     str(index_dir)) == 0
        assert "OK: catalog and index" in capsys.readouterr().out
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
