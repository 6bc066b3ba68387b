"""The indexer's reading of a source through chextriev.io: the walk (extensions, DICOM without
extension), manifest hints and explicit manifests, the ledger filter, decode outcomes, and given
boxes reaching the embedder."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, write_dicom, write_png

from chextriev.errors import DataFormatError
from chextriev.io.fields import view_decision
from chextriev.records import Record
from indexer.decode import FAILED, OK, SKIPPED, decode
from indexer.discovery import LedgerEntry, discover, pending


def _file_record(path) -> Record:
    (record,) = discover(path)
    return record


def test_walk_by_extension_and_preamble(tmp_path):
    write_png(tmp_path / "a" / "x.png", 1)
    write_dicom(tmp_path / "b" / "IM0001", 2)  # PACS export: no extension
    write_dicom(tmp_path / "b" / "IM0002.weird", 3)
    (tmp_path / "b" / "notes").write_text("not an image")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    write_png(tmp_path / ".hidden" / "y.png", 4)
    records = discover(tmp_path)
    assert sorted(os.path.basename(r.key) for r in records) == ["IM0001", "IM0002.weird", "x.png"]
    for record in records:
        assert record.key == os.path.realpath(record.source) and os.path.isabs(record.key)
        stat = os.stat(record.key)
        assert record.version == f"{stat.st_size}:{stat.st_mtime_ns}"
    # Nothing was opened for the DICOM tags: the patient comes when the file is decoded.
    assert all(r.patient_id is None for r in records)


def test_manifest_hints_and_explicit_manifest(tmp_path):
    write_png(tmp_path / "i1.png", 1)
    write_png(tmp_path / "i2.png", 2)
    (tmp_path / "list.csv").write_text(
        "path,patient,study,ViewPosition,sex,age,Atelectasis,Cardiomegaly\n"
        "i1.png,P9,S9,LATERAL,M,61,1,0\n")
    (only,) = discover(tmp_path, manifest=tmp_path / "list.csv")
    assert (only.patient_id, only.study_id, only.view) == ("P9", "S9", "LATERAL")
    assert only.meta["sex"] == "M" and only.meta["age"] == 61
    assert only.class_names == ("Atelectasis", "Cardiomegaly") and only.labels.tolist() == [1, 0]
    assert len(discover(tmp_path)) == 2  # no root manifest.csv: plain walk
    assert len(discover(tmp_path / "list.csv")) == 1  # a CSV source is a manifest
    (tmp_path / "manifest.csv").write_text("path,patient_id\ni2.png,P2\n")
    hinted = {os.path.basename(r.key): r for r in discover(tmp_path)}
    assert set(hinted) == {"i1.png", "i2.png"} and hinted["i2.png"].patient_id == "P2"
    with pytest.raises(DataFormatError, match="path"):
        (tmp_path / "bad.csv").write_text("file_name\nx\n")
        discover(tmp_path / "bad.csv")
    with pytest.raises(DataFormatError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="neither"):
        discover(tmp_path / "notes.txt")
    with pytest.raises(DataFormatError, match="scheme"):
        discover("ftp://pacs.example/archive")


@pytest.mark.parametrize("view,expected,skipped", [
    ("PA", "PA", False), ("ap", "AP", False), (None, None, False), ("", None, False),
    ("POSTERO_ANTERIOR", "PA", False), ("LL", "LL", True), ("LATERAL", "LATERAL", True)])
def test_view_decision(view, expected, skipped):
    got, reason = view_decision(view)
    assert got == expected and (reason is not None) == skipped


def test_ledger_filter(tmp_path):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "b.png", 2)
    a, b = sorted(discover(tmp_path), key=lambda r: r.key)
    web = Record(source="http://pacs/x", image_id="1.2", key="dicomweb:http://pacs/x")
    failed = Record(source="http://pacs/y", image_id="1.3", key="dicomweb:http://pacs/y")
    ledger = {a.key: LedgerEntry(a.version, "h-a", False), b.key: LedgerEntry("1:2", "h-b", False),
              web.key: LedgerEntry(None, "h-w", False), failed.key: LedgerEntry(None, None, True)}
    counts = SimpleNamespace(discovered=0, unchanged=0)
    out = list(pending(iter([a, b, web, failed]), ledger, counts))
    assert [(r.key, h) for r, h in out] == [(b.key, "h-b"), (failed.key, None)]
    assert (counts.discovered, counts.unchanged) == (4, 2)


def test_decode_outcomes(tmp_path):
    ok = decode(_file_record(write_dicom(tmp_path / "a" / "a.dcm", 1, size=128)), max_input_side=64)
    assert ok.status == OK and ok.pixels.shape == (64, 64) and ok.original_hw == (128, 128)
    assert ok.meta["patient_id"] == "P1" and ok.meta["age"] == 45 and ok.thumbnail.startswith(b"\xff\xd8\xff")
    assert ok.meta["image_id"] == ok.meta["sop_instance_uid"]  # no manifest: the SOPInstanceUID
    assert ok.meta["study_instance_uid"] and ok.meta["series_instance_uid"]
    lateral = decode(_file_record(write_dicom(tmp_path / "l" / "l.dcm", 2, view="LL")))
    assert lateral.status == SKIPPED and "LL" in lateral.reason and lateral.pixels is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 50)
    bad = decode(_file_record(tmp_path / "c" / "bad.dcm"))
    assert bad.status == FAILED and bad.reason and bad.content_hash
    gone = Record(source=tmp_path / "gone.png", image_id="gone")
    missing = decode(gone)
    assert missing.status == FAILED and "cannot read" in missing.reason
    same = decode(_file_record(ok.key), known_hash=ok.content_hash)
    assert same.status == OK and same.pixels is None


def test_manifest_view_is_a_hint_the_tags_override(tmp_path):
    write_dicom(tmp_path / "x.dcm", 3, view="PA", patient="TAGS")
    (tmp_path / "m.csv").write_text("path,patient_id,view,image_id\nx.dcm,HINT,LL,mine\n")
    (record,) = discover(tmp_path / "m.csv")
    decoded = decode(record)
    assert decoded.status == OK and decoded.meta["view"] == "PA"
    assert decoded.meta["patient_id"] == "TAGS" and decoded.meta["image_id"] == "mine"


def test_given_boxes_reach_the_embedder(tmp_path):
    """A record with boxes (a scene graph's) is embedded with them, scaled to the shrunk image,
    and the stored boxes are the given ones in original pixels."""
    from chextriev.io.sources import RecordSource
    from indexer.catalog import Catalog
    from indexer.pipeline import run_index

    write_png(tmp_path / "src" / "a.png", 5, size=512)  # shrunk to 256 px for the model
    write_png(tmp_path / "src" / "b.png", 6, size=512)
    boxes = np.tile(np.array([10, 20, 400, 480], np.float32), (18, 1))
    boxes[3] = np.nan
    records = discover(tmp_path / "src")
    records[0].boxes = boxes

    class ListedSource(RecordSource):
        def iter_records(self):
            return iter(records)

    source = ListedSource()
    embedder = FakeEmbedder()
    summary = run_index(source, embedder=embedder, index_dir=tmp_path / "idx", progress=False)
    assert summary.indexed == 2
    assert embedder.boxes_given == [True, False]
    catalog = Catalog.open(None, tmp_path / "idx")
    rows = {r["image_id"]: r for r in catalog.images(catalog.index.ids.tolist())}
    given = rows["a"]
    assert given["box_source"] == "given" and rows["b"]["box_source"] == "atlas"
    assert given["boxes"][3] is None
    np.testing.assert_allclose(given["boxes"][0], [10, 20, 400, 480], atol=0.05)
