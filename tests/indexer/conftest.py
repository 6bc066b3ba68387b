"""Fixtures of the indexer tests (tiny archives, a fake embedder, an indexed catalog on each
backend: SQLite in the index folder and a fresh PostgreSQL database)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from indexer_fakes import FakeEmbedder, make_archive, open_sessions


@dataclass
class Indexed:
    root: Path
    written: dict
    index_dir: Path
    summary: object
    db_url: str | None  # None: SQLite in the index folder

    def sessions(self):
        return open_sessions(self.index_dir, self.db_url)


@pytest.fixture(scope="session")
def synth_and_ckpt(tmp_path_factory):
    """A 4-patient synthetic archive (128 px) and a tiny V6 checkpoint trained on it."""
    import argparse

    from chextriev.synth.cli import register as synth_register
    from chextriev.training.quick import train_tiny_checkpoint

    root = tmp_path_factory.mktemp("model")
    parser = argparse.ArgumentParser()
    synth_register(parser.add_subparsers())
    archive = root / "archive"
    args = parser.parse_args(["synth", "--out", str(archive), "--patients", "4", "--seed", "3",
                              "--size", "128"])
    assert args.func(args) == 0
    ckpt = train_tiny_checkpoint(archive, root / "train", variant="v6")
    return archive, ckpt


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    written = make_archive(root)
    return root, written


@pytest.fixture
def indexed(archive, tmp_path, fake_embedder, catalog_url) -> Indexed:
    """One indexing run of the tiny archive, on each catalog backend."""
    from indexer.pipeline import run_index

    root, written = archive
    index_dir = tmp_path / "idx"
    summary = run_index(root, embedder=fake_embedder, index_dir=index_dir, db_url=catalog_url,
                        batch_size=4, progress=False)
    return Indexed(root, written, index_dir, summary, catalog_url)
