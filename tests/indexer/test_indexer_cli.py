"""`chextriev index verify` / `index remove` through the registered argparse parsers."""

from __future__ import annotations

import argparse

import pytest

from indexer import cli


def _run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_verify_remove_exit_codes(indexed, capsys):
    _, _, index_dir, _ = indexed
    assert _run(["index", "verify", "--index-dir", str(index_dir)]) == 0
    assert "agree" in capsys.readouterr().out
    assert _run(["index", "remove", "--index-dir", str(index_dir), "img1", "img2"]) == 0
    assert "removed 2" in capsys.readouterr().out
    assert _run(["index", "verify", "--index-dir", str(index_dir)]) == 0
    # Break the agreement: delete the manifest's build files.
    import shutil

    shutil.rmtree(index_dir / "builds")
    assert _run(["index", "verify", "--index-dir", str(index_dir)]) == 1
    assert "DIFFERENCE" in capsys.readouterr().out


def test_index_needs_source_and_checkpoint(tmp_path):
    from chextriev.errors import ChextrievError

    with pytest.raises(ChextrievError, match="--source"):
        _run(["index", "--index-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        _run(["index", "--index-type", "hnsw"])
