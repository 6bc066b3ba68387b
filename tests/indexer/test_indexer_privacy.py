"""Hostile files and privacy at ingest, through `chextriev index` (its argparse handler, with the
fake embedder of indexer_fakes.py in place of the checkpoint's model): every bad file fails
alone with its reason while the good ones are indexed, and with --pseudonymise nothing raw
(identifiers, UIDs, dates, file names) reaches the catalog."""

from __future__ import annotations

import argparse
import json

import hostile_files as hostile
import pydicom
import pytest
from indexer_fakes import FakeEmbedder, write_dicom, write_png
from sqlalchemy import select

from chextriev.errors import ChextrievError
from chextriev.io.deid import Deidentifier
from chextriev.io.fields import uid_problem
from chextriev.records import Record
from indexer import cli
from indexer.catalog import Catalog
from indexer.db import Image, Patient, Source, Study, default_db_url
from indexer.decode import BURNED_IN_REASON, FieldError, IngestPolicy, catalog_meta
from indexer.engine import make_engine, make_sessionmaker

KEY = "a-test-pseudonym-key"


@pytest.fixture
def index_command(monkeypatch, tmp_path):
    """``run(*argv) -> (exit code, printed summary)``: `chextriev index` with the fake
    embedder; ``--checkpoint`` names an (empty) file as the command requires."""
    monkeypatch.setattr("indexer.embedder.ModelEmbedder", lambda *a, **k: FakeEmbedder())
    checkpoint = tmp_path / "fake.ckpt"
    checkpoint.write_bytes(b"")

    def run(*argv: str, capsys=None) -> int:
        parser = argparse.ArgumentParser()
        cli.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["index", "--checkpoint", str(checkpoint), "--device", "cpu",
                                  "--no-progress", "--batch-size", "4", *argv])
        return args.func(args)

    return run


def _rows(index_dir) -> list[Image]:
    with make_sessionmaker(make_engine(default_db_url(index_dir)))() as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


def _empty_sop(path, seed):
    write_dicom(path, seed)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ""
    ds.file_meta.MediaStorageSOPInstanceUID = ""
    ds.save_as(path)
    return path


def test_two_dicoms_with_an_empty_sop_instance_uid_do_not_fail_the_run(tmp_path, index_command,
                                                                       capsys):
    root = tmp_path / "archive"
    empty = [_empty_sop(root / f"empty{i}.dcm", 10 + i) for i in range(2)]
    good = [write_dicom(root / f"good{i}.dcm", 20 + i) for i in range(2)]
    good += [write_png(root / f"good{i}.png", 30 + i) for i in range(2)]
    index_dir = tmp_path / "idx"
    assert index_command("--source", str(root), "--index-dir", str(index_dir), "--workers", "2") == 0
    assert "failed 0" in capsys.readouterr().out
    rows = {row.source_path.rsplit("/", 1)[-1]: row for row in _rows(index_dir)}
    assert {p.name for p in empty + good} == set(rows) and all(
        r.status == "indexed" for r in rows.values())
    assert rows["empty0.dcm"].sop_instance_uid is None and rows["empty1.dcm"].sop_instance_uid is None
    assert rows["empty0.dcm"].image_id == "empty0"  # no UID to name it: the file name
    # a rerun opens nothing and fails nothing
    assert index_command("--source", str(root), "--index-dir", str(index_dir), "--workers", "0") == 0
    assert "unchanged 6" in capsys.readouterr().out


def test_hostile_files_fail_alone_and_the_good_ones_are_indexed(tmp_path, index_command, capsys,
                                                                monkeypatch):
    monkeypatch.setenv("CHEXTRIEV_MAX_PIXELS", str(64 * 1024 * 1024))  # the workers inherit it
    root = tmp_path / "archive"
    root.mkdir()
    for i, (name, (make, _)) in enumerate(sorted(hostile.HOSTILE.items())):
        suffix = ".png" if name.startswith("PNG") else ".jpg" if name.startswith("JPEG SOF") \
            else ".dcm"
        (root / f"hostile{i:02d}{suffix}").write_bytes(make())
    bad_uid = write_dicom(root / "bad_uid.dcm", 7)
    ds = pydicom.dcmread(bad_uid)
    ds.SOPInstanceUID = "1.2.x.4"  # not a UID: fails alone (a shared bad UID would merge images)
    ds.save_as(bad_uid)
    good = [write_png(root / f"good{i}.png", 40 + i) for i in range(3)]
    index_dir = tmp_path / "idx"
    assert index_command("--source", str(root), "--index-dir", str(index_dir), "--workers", "0") == 0
    capsys.readouterr()
    rows = {row.source_path.rsplit("/", 1)[-1]: row for row in _rows(index_dir)}
    for path in good:
        assert rows[path.name].status == "indexed"
    failed = {name: row.reason for name, row in rows.items() if name.startswith(("hostile", "bad"))}
    assert len(failed) == len(hostile.HOSTILE) + 1
    assert all(rows[name].status == "failed" and reason for name, reason in failed.items()), failed
    assert "invalid sop_instance_uid: not digits separated by dots" == failed["bad_uid.dcm"]
    assert any("16 frame(s)" in reason for reason in failed.values())  # the deflated bomb


def _write_patient_archive(root):
    """Two DICOMs of one patient on two dates, one of another, one burned-in, one PNG."""
    first = write_dicom(root / "alice/one.dcm", 1, patient="ALICE-MRN-77")
    second = write_dicom(root / "alice/two.dcm", 2, patient="ALICE-MRN-77")
    ds = pydicom.dcmread(second)
    ds.StudyDate = "20240301"
    ds.save_as(second)
    write_dicom(root / "bob/three.dcm", 3, patient="BOB-MRN-88")
    (root / "carol").mkdir()
    (root / "carol/carol_xray.dcm").write_bytes(hostile.burned_in())
    write_png(root / "dave/dave_smith_chest.png", 4)
    return first, second


def test_pseudonymise_stores_nothing_raw(tmp_path, index_command, monkeypatch, capsys):
    monkeypatch.setenv("CHEXTRIEV_PSEUDONYM_KEY", KEY)
    root = tmp_path / "archive"
    first, second = _write_patient_archive(root)
    raw = set()
    for path in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        raw |= {ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                ds.StudyDate}
    raw |= {"one", "two", "three", "carol_xray", "dave_smith_chest", "alice", "dave"}
    index_dir = tmp_path / "idx"
    assert index_command("--source", str(root), "--index-dir", str(index_dir), "--workers", "0",
                         "--pseudonymise") == 0
    capsys.readouterr()
    engine = make_engine(default_db_url(index_dir))
    with make_sessionmaker(engine)() as session:
        images = list(session.scalars(select(Image)))
        stored = [json.dumps([image.image_id, image.study_instance_uid, image.series_instance_uid,
                              image.sop_instance_uid, image.study_date, image.reason])
                  for image in images]
        stored += list(session.scalars(select(Patient.key))) + list(session.scalars(select(Study.key)))
        stored += [str(d) for d in session.scalars(select(Study.study_date))]
        ledger = list(session.scalars(select(Source.path)))
    text = "\n".join(stored)
    leaked = sorted(value for value in raw if value in text)
    assert not leaked, leaked
    # the ledger holds keyed hashes of the paths (tests/indexer/test_indexer_pseudonymised_ledger.py)
    assert ledger and all(path.startswith("pseudonym:") for path in ledger)
    assert all(image.source_path.startswith("pseudonym:") for image in images)
    by_uid = {image.sop_instance_uid: image for image in images if image.sop_instance_uid}
    deid = Deidentifier(KEY.encode())
    one = by_uid[deid.uid(pydicom.dcmread(first).SOPInstanceUID)]
    two = by_uid[deid.uid(pydicom.dcmread(second).SOPInstanceUID)]
    assert one.image_id == one.sop_instance_uid and uid_problem(one.sop_instance_uid) is None
    shift = deid.date_shift("ALICE-MRN-77")
    assert 1 <= abs(shift) <= 365
    import datetime as dt

    dates = [dt.datetime.strptime(d, "%Y%m%d").date() for d in (one.study_date, two.study_date)]
    assert (dates[1] - dates[0]).days == (dt.date(2024, 3, 1) - dt.date(2024, 1, 2)).days
    assert dates[0] - dt.timedelta(days=shift) == dt.date(2024, 1, 2)
    # a server with the key recognises the image by its real SOPInstanceUID (search by
    # reference); without it, or with another key, the pseudonymised row is not found
    catalog = Catalog.open(None, index_dir)
    try:
        raw_sop = str(pydicom.dcmread(first).SOPInstanceUID)
        assert catalog.lookup_instance(raw_sop, pseudonym_key=KEY.encode()) == one.id
        assert catalog.lookup_instance(raw_sop) is None
        assert catalog.lookup_instance(raw_sop, pseudonym_key=b"another-key") is None
        assert catalog.lookup_instance(one.sop_instance_uid) == one.id  # the stored value as it is
    finally:
        catalog.close()
    burned = [image for image in images if image.status == "skipped"]
    assert len(burned) == 1 and burned[0].reason == BURNED_IN_REASON and burned[0].thumbnail is None
    assert all(image.status == "indexed" for image in images if image is not burned[0])

    # the same key gives the same pseudonyms in another run; year-only dates on request
    again = tmp_path / "again"
    assert index_command("--source", str(root), "--index-dir", str(again), "--workers", "0",
                         "--pseudonymise", "--dates", "year", "--keep-burned-in") == 0
    rows = _rows(again)
    assert {r.sop_instance_uid for r in rows} == {i.sop_instance_uid for i in images}
    assert {r.study_date for r in rows if r.study_date} == {"2024"}
    assert all(r.status == "indexed" for r in rows)  # the burned-in image kept


def test_cli_refuses_privacy_flags_without_pseudonymise(tmp_path, index_command, monkeypatch):
    monkeypatch.delenv("CHEXTRIEV_PSEUDONYM_KEY", raising=False)
    root = tmp_path / "archive"
    write_png(root / "a.png", 1)
    with pytest.raises(ChextrievError, match="only apply with --pseudonymise"):
        index_command("--source", str(root), "--index-dir", str(tmp_path / "i"), "--dates", "year")
    with pytest.raises(ChextrievError, match="needs a key"):
        index_command("--source", str(root), "--index-dir", str(tmp_path / "i"), "--pseudonymise")


def test_catalog_meta_fails_malformed_fields_and_drops_bad_dates():
    record = Record(source="x.png", image_id="img", patient_id="P1", study_id="S1",
                    meta={"sop_instance_uid": "1.2.3", "study_date": "not a date", "age": "1e999Y"})
    meta = catalog_meta(record)
    assert meta["study_date"] is None and meta["age"] is None
    assert meta["sop_instance_uid"] == "1.2.3"
    record.meta["sop_instance_uid"] = "  "
    assert catalog_meta(record)["sop_instance_uid"] is None  # empty = absent
    for field, value in (("sop_instance_uid", "9" * 65), ("study_instance_uid", "1.2.3a")):
        bad = Record(source="x.png", image_id="img", meta={field: value})
        with pytest.raises(FieldError, match=field):
            catalog_meta(bad)
    with pytest.raises(FieldError, match="patient_id is longer"):
        catalog_meta(Record(source="x.png", image_id="img", patient_id="P" * 200))
    # pseudonymised, a long raw identifier is stored as its (short) pseudonym
    policy = IngestPolicy(Deidentifier(b"k"))
    assert len(catalog_meta(Record(source="x.png", image_id="img", patient_id="P" * 200), policy)["patient_id"]) == 32
