"""Quiet by default (chextriev/logs.py): the commands log what a user needs; Alembic's set-up lines,
Faiss's loader and Lightning's banners and tips show with ``-v`` only, as DEBUG lines; warnings and
the lines a user needs (an upgrade step, why training stopped) stay."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from chextriev.logs import DemoteToDebug, quiet_libraries

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def root_records():
    """The records the root logger's handlers receive (level restored afterwards)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    root = logging.getLogger()
    handler, level = Keep(), root.level
    root.addHandler(handler)
    quiet_libraries()
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(records):
    return [(r.name, r.levelname, r.getMessage()) for r in records]


def test_library_chatter_is_debug_and_what_users_need_stays(root_records):
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002, vector store")
    logging.getLogger("faiss.loader").info("Loading faiss with AVX512 support.")
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    rank_zero.info("GPU available: False, used: False")
    rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
    logging.getLogger("lightning_fabric.utilities.seed").info("Seed set to 0")
    rank_zero.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    rank_zero.warning("a Lightning warning")
    logging.getLogger("faiss.loader").warning("a Faiss warning")
    assert _lines(root_records) == [
        ("alembic.runtime.migration", "INFO", "Running upgrade 0001 -> 0002, vector store"),
        ("pytorch_lightning.utilities.rank_zero", "INFO", "`Trainer.fit` stopped: `max_epochs=1` reached."),
        ("pytorch_lightning.utilities.rank_zero", "WARNING", "a Lightning warning"),
        ("faiss.loader", "WARNING", "a Faiss warning"),
    ]
    root_records.clear()
    logging.getLogger().setLevel(logging.DEBUG)  # -v: the chatter shows, as DEBUG lines
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
    rank_zero.info("GPU available: False, used: False")
    assert _lines(root_records) == [
        ("alembic.runtime.plugins", "DEBUG", "setup plugin alembic.autogenerate.schemas"),
        ("pytorch_lightning.utilities.rank_zero", "DEBUG", "GPU available: False, used: False"),
    ]
    quiet_libraries()  # idempotent: one filter per logger
    assert sum(isinstance(f, DemoteToDebug) for f in logging.getLogger("faiss.loader").filters) == 1


@pytest.mark.slow
def test_a_command_that_opens_a_catalog_says_what_it_did_and_no_more(tmp_path):
    """A real command: ``chextriev db upgrade`` of a catalog made by ``chextriev index`` prints
    its result; Alembic's set-up lines show only under ``-v``."""
    from checkpoint_helpers import write_untrained_checkpoint

    from chextriev.synth.writer import SynthConfig, write_archive

    archive, index_dir = tmp_path / "archive", tmp_path / "index"
    write_archive(SynthConfig(out=archive, patients=2, seed=0, size=64), progress=False)
    checkpoint = write_untrained_checkpoint(tmp_path / "tiny.ckpt", "v6")
    command = [sys.executable, "-m", "chextriev_cli.main"]
    index = subprocess.run([*command, "index", "--data", str(archive), "--checkpoint", str(checkpoint),
                            "--index-dir", str(index_dir), "--workers", "0", "--device", "cpu", "--no-progress"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert index.returncode == 0, index.stderr[-2000:]
    quiet = subprocess.run([*command, "db", "upgrade", "--index-dir", str(index_dir)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    verbose = subprocess.run([*command, "-v", "db", "upgrade", "--index-dir", str(index_dir)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    for done in (index, quiet, verbose):
        assert done.returncode == 0, done.stderr[-2000:]
    for chatter in ("setup plugin", "Context impl", "Will assume non-transactional DDL", "faiss.loader"):
        assert chatter not in index.stderr + quiet.stderr, chatter
    assert "created a new catalog" in index.stderr and "already at revision" in quiet.stdout
    assert "DEBUG alembic.runtime.plugins: setup plugin" in verbose.stderr
    assert "DEBUG alembic.runtime.migration: Context impl" in verbose.stderr
