"""Tiny synthetic archives shared by the synth tests (6 patients at 128 px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chextriev.synth.writer import SynthConfig, write_archive


def make_archive(out: Path, seed: int = 3, **overrides) -> Path:
    settings = {"patients": 6, "seed": seed, "size": 128, "dicom_share": 0.4, "normal_share": 0.3}
    settings.update(overrides)
    write_archive(SynthConfig(out=out, **settings), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("synth") / "a")


@pytest.fixture
def archive_factory():
    """make_archive(out, seed=..., **SynthConfig overrides) -> out."""
    return make_archive
