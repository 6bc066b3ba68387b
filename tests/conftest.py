"""Shared fixtures. Tests that need the real NIH sample find it through CHEXTRIEV_NIH_SAMPLE
(default ../shared/data/nih-sample beside the checkout) and skip with that reason when it is
absent; CI sets CHEXTRIEV_REQUIRE_SHARED=1 so that they fail there instead of skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A throwaway PostgreSQL server and the two-backend `catalog_url` fixture (tests/postgres_fixtures.py);
# the tiny batch, records and checkpoint of the model and training tests (tests/model_fixtures.py).
# tests/ is on the import path through pytest's `pythonpath` setting (pyproject.toml).
from model_fixtures import tiny_batch, tiny_checkpoint, tiny_records  # noqa: F401
from postgres_fixtures import catalog_url, postgres_server, postgres_url  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]


def nih_sample_dir() -> Path:
    default = REPO_ROOT.parent / "shared" / "data" / "nih-sample"
    return Path(os.environ.get("CHEXTRIEV_NIH_SAMPLE", str(default)))


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    """Path of the real NIH ChestX-ray14 sample (images/ and metadata/)."""
    path = nih_sample_dir()
    if not (path / "images").is_dir():
        if os.environ.get("CHEXTRIEV_REQUIRE_SHARED") == "1":
            pytest.fail(f"NIH sample required but missing at {path} (set CHEXTRIEV_NIH_SAMPLE)")
        pytest.skip(f"NIH sample not found at {path} (set CHEXTRIEV_NIH_SAMPLE to its folder)")
    return path
