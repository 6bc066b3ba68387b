"""Same seed, same bytes; another seed, another archive; worker count changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from chextriev.errors import ChextrievError
from chextriev.synth.writer import SynthConfig, write_archive


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path, archive_factory):
    a = _tree(archive_factory(tmp_path / "a", seed=5, patients=3, size=64, dicom_share=0.5))
    b = _tree(archive_factory(tmp_path / "b", seed=5, patients=3, size=64, dicom_share=0.5))
    assert a.keys() == b.keys() and len(a) > 10
    assert a == b
    c = _tree(archive_factory(tmp_path / "c", seed=6, patients=3, size=64, dicom_share=0.5))
    assert c != a
    assert set(c) != set(a)  # ids depend on the seed


@pytest.mark.slow
def test_workers_do_not_change_bytes(tmp_path, archive_factory):
    a = _tree(archive_factory(tmp_path / "a", seed=2, patients=3, size=64))
    b = _tree(archive_factory(tmp_path / "b", seed=2, patients=3, size=64, workers=2))
    assert a == b


def test_refuses_existing_archive_and_bad_shares(tmp_path, archive_factory):
    out = archive_factory(tmp_path / "a", patients=1, size=64)
    with pytest.raises(ChextrievError, match="already holds"):
        write_archive(SynthConfig(out=out, patients=1, size=64))
    with pytest.raises(ChextrievError, match="dicom-share"):
        write_archive(SynthConfig(out=tmp_path / "x", patients=1, size=64, dicom_share=1.5))
