"""Shared fixtures. Tests that need the real NIH sample find it through CHEXTRIEV_NIH_SAMPLE
(default ../shared/data/nih-sample beside the checkout) and skip with that reason when it is
absent; CI sets CHEXTRIEV_REQUIRE_SHARED=1 so that they fail there instead of skipping.

The suite runs the model eagerly: ``--compile`` defaults to on for users (chextriev.compiled),
and compiling each test model's trunk would cost 15-60 s per model on a small CPU. So
``CHEXTRIEV_COMPILE`` is set to ``off`` here (for the commands, servers and subprocesses the
tests start) unless the environment already sets it (``CHEXTRIEV_COMPILE=on pytest ...`` runs
the whole suite compiled). The tests about compiling (tests/model/test_compiled.py) set what
they test themselves. Whatever a test compiles goes to a compiled cache of the session
(``CHEXTRIEV_COMPILE_CACHE`` under the basetemp), never to the user's ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A throwaway PostgreSQL server and the two-backend `catalog_url` fixture (tests/postgres_fixtures.py);
# the tiny batch, records and checkpoint of the model and training tests (tests/model_fixtures.py).
# tests/ is on the import path through pytest's `pythonpath` setting (pyproject.toml).
from model_fixtures import tiny_batch, tiny_checkpoint, tiny_records  # noqa: F401
from postgres_fixtures import catalog_url, own_postgres, postgres_server, postgres_url  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("CHEXTRIEV_COMPILE", "off")


@pytest.fixture(scope="session", autouse=True)
def _compiled_cache_of_the_session(tmp_path_factory):
    """``CHEXTRIEV_COMPILE_CACHE`` for the session (unless the environment sets one)."""
    if "CHEXTRIEV_COMPILE_CACHE" not in os.environ:
        os.environ["CHEXTRIEV_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("compiled-cache"))
        yield
        os.environ.pop("CHEXTRIEV_COMPILE_CACHE", None)
    else:
        yield


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
