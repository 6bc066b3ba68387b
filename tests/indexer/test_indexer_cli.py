"""`chextriev index verify / repair / remove` and `chextriev db upgrade` through the registered
argparse parsers."""

from __future__ import annotations

import argparse
import math

import pytest

from indexer import cli


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    return parser.parse_args(argv)


def _run(argv):
    args = _parse(argv)
    return args.func(args)


def test_verify_repair_remove_exit_codes(indexed, capsys):
    index_dir = str(indexed.index_dir)
    db = ["--db", indexed.db_url] if indexed.db_url else []
    assert _run(["index", "verify", "--index-dir", index_dir, *db]) == 0
    assert "agree" in capsys.readouterr().out
    assert _run(["index", "verify", "--index-dir", index_dir, *db, "--sample", "3"]) == 0
    assert "3 sampled" in capsys.readouterr().out
    assert _run(["index", "remove", "--index-dir", index_dir, *db, "img1", "img2"]) == 0
    assert "removed 2" in capsys.readouterr().out
    assert _run(["index", "verify", "--index-dir", index_dir, *db]) == 0
    # Break the agreement: delete the segment files the manifest names.
    for path in (indexed.index_dir / "segments").iterdir():
        path.unlink()
    assert _run(["index", "verify", "--index-dir", index_dir, *db]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENCE" in out and "missing" in out and "index repair" in out
    assert _run(["index", "repair", "--index-dir", index_dir, *db]) == 0
    assert "8 vectors" in capsys.readouterr().out
    assert _run(["index", "verify", "--index-dir", index_dir, *db]) == 0


def test_db_upgrade_on_a_current_catalog(indexed, capsys):
    db = ["--db", indexed.db_url] if indexed.db_url else []
    assert _run(["db", "upgrade", "--index-dir", str(indexed.index_dir), *db]) == 0
    assert "already at revision 0002" in capsys.readouterr().out


def test_index_needs_source_and_checkpoint(tmp_path):
    from chextriev.errors import ChextrievError

    with pytest.raises(ChextrievError, match="--data"):
        _run(["index", "--index-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        _run(["index", "--index-type", "hnsw"])
    with pytest.raises(ChextrievError, match="--db URL or --index-dir"):
        _run(["db", "upgrade"])
    with pytest.raises(ChextrievError, match="no catalog"):
        _run(["index", "verify", "--index-dir", str(tmp_path / "nothing")])


def test_wait_flag_forms():
    assert _parse(["index"]).wait is None
    assert _parse(["index", "--wait"]).wait == math.inf
    assert _parse(["index", "--wait", "30"]).wait == 30.0
    assert _parse(["index", "repair", "--index-dir", "x", "--wait", "5"]).wait == 5.0


def test_nprobe_default_is_the_factorys():
    # cli.py spells the number out to keep Faiss out of `--help`; it must stay the build's default.
    from indexer.faiss_factory import DEFAULT_NPROBE

    assert _parse(["index"]).nprobe == DEFAULT_NPROBE
