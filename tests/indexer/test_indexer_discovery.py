"""Discovery: extensions, DICOM preamble without extension, manifests, view decisions."""

from __future__ import annotations

import pytest
from indexer_fakes import write_dicom, write_png

from chextriev.errors import DataFormatError
from indexer.decode import FAILED, OK, SKIPPED, decode
from indexer.discovery import Candidate, discover, read_manifest, view_decision


def test_walk_by_extension_and_preamble(tmp_path):
    write_png(tmp_path / "a" / "x.png", 1)
    write_dicom(tmp_path / "b" / "IM0001", 2)  # PACS export: no extension
    write_dicom(tmp_path / "b" / "IM0002.weird", 3)
    (tmp_path / "b" / "notes").write_text("not an image")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    write_png(tmp_path / ".hidden" / "y.png", 4)
    found = [c.path for c in discover(tmp_path)]
    names = sorted(p.rsplit("/", 1)[1] for p in found)
    assert names == ["IM0001", "IM0002.weird", "x.png"]


def test_manifest_hints_and_explicit_manifest(tmp_path):
    write_png(tmp_path / "i1.png", 1)
    write_png(tmp_path / "i2.png", 2)
    (tmp_path / "list.csv").write_text(
        "path,patient,study,ViewPosition,sex,age,Atelectasis,Cardiomegaly\n"
        "i1.png,P9,S9,LATERAL,M,61,1,0\n")
    only = discover(tmp_path, manifest=tmp_path / "list.csv")
    assert len(only) == 1
    hints = only[0].hints
    assert hints["patient_id"] == "P9" and hints["view"] == "LATERAL" and hints["age"] == 61
    assert hints["known_findings"] == {"Atelectasis": 1, "Cardiomegaly": 0}
    assert len(discover(tmp_path)) == 2  # no root manifest.csv: plain walk
    with pytest.raises(DataFormatError, match="path"):
        (tmp_path / "bad.csv").write_text("file\nx\n")
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(DataFormatError, match="does not exist"):
        discover(tmp_path / "nope")


@pytest.mark.parametrize("view,expected,skipped", [
    ("PA", "PA", False), ("ap", "AP", False), (None, None, False), ("", None, False),
    ("LL", "LL", True), ("LATERAL", "LATERAL", True)])
def test_view_decision(view, expected, skipped):
    got, reason = view_decision(view)
    assert got == expected and (reason is not None) == skipped


def test_decode_outcomes(tmp_path):
    ok = decode(Candidate(str(write_dicom(tmp_path / "a.dcm", 1, size=128)), {}), max_side=64)
    assert ok.status == OK and ok.pixels.shape == (64, 64) and ok.original_hw == (128, 128)
    assert ok.meta["patient_id"] == "P1" and ok.meta["age"] == 45 and ok.thumbnail.startswith(b"\x89PNG")
    lateral = decode(Candidate(str(write_dicom(tmp_path / "l.dcm", 2, view="LL")), {}))
    assert lateral.status == SKIPPED and "LL" in lateral.reason and lateral.pixels is None
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 50)
    bad = decode(Candidate(str(tmp_path / "bad.dcm"), {}))
    assert bad.status == FAILED and bad.reason and bad.content_hash
    missing = decode(Candidate(str(tmp_path / "gone.png"), {}))
    assert missing.status == FAILED and "cannot read" in missing.reason
    same = decode(Candidate(ok.path, {}), known_hash=ok.content_hash)
    assert same.status == OK and same.pixels is None
