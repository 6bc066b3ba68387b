"""Fixtures of the indexer tests (tiny archives, a fake embedder, an indexed catalog)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from indexer_fakes import FakeEmbedder, make_archive


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    written = make_archive(root)
    return root, written


@pytest.fixture
def indexed(archive, tmp_path, fake_embedder):
    """(archive root, written files, index dir, summary) after one indexing run."""
    from indexer.pipeline import run_index

    root, written = archive
    index_dir = tmp_path / "idx"
    summary = run_index(root, embedder=fake_embedder, index_dir=index_dir, batch_size=4,
                        progress=False)
    return root, written, index_dir, summary
