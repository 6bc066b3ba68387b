"""End to end on a tiny archive with the fake embedder: counts, self-search, reruns, changes,
dedupe, non-frontal skip, broken files, verify, remove, pseudonymisation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, write_dicom, write_png
from sqlalchemy import func, select

from indexer.catalog import Catalog, UnknownImageError
from indexer.db import (
    Image,
    Patient,
    Pseudonymiser,
    Source,
    default_db_url,
    make_engine,
    make_sessionmaker,
)
from indexer.pipeline import run_index
from indexer.sync import remove_images, verify


def _sessions(index_dir):
    return make_sessionmaker(make_engine(default_db_url(index_dir)))


def _status_counts(index_dir):
    with _sessions(index_dir)() as s:
        return dict(s.execute(select(Image.status, func.count()).group_by(Image.status)).all())


def test_first_run_counts_and_reasons(indexed):
    _root, _written, index_dir, summary = indexed
    # 6 PNG + 4 DICOM frontal; the duplicate is indexed once; lateral skipped; broken failed.
    assert summary.indexed == 10
    assert summary.duplicates == 1
    assert summary.skipped == 1 and summary.failed == 1
    assert any("non-frontal view LL" in r for r in summary.reasons)
    assert _status_counts(index_dir) == {"indexed": 10, "skipped": 1, "failed": 1}
    with _sessions(index_dir)() as s:
        assert s.scalar(select(func.count(Source.id))) == 13  # every file is in the ledger
        failed = s.scalars(select(Image).where(Image.status == "failed")).one()
        assert failed.source_path.endswith("broken.png") and failed.reason
    assert verify(_sessions(index_dir), index_dir) == []


def test_self_search_and_metadata(indexed):
    _, _written, index_dir, _ = indexed
    catalog = Catalog.open(None, index_dir)
    assert catalog.size == 10 and catalog.checkpoint_id == FakeEmbedder.checkpoint_id
    ids = sorted(catalog.index.ids.tolist())
    hits = catalog.search(catalog.vectors(ids), k=3)
    for pk, row in zip(ids, hits):
        assert row[0].image_id == pk and row[0].score == pytest.approx(1.0, abs=1e-3)
        assert len(row) == 3 and row[0].score >= row[1].score >= row[2].score
    rows = catalog.images(ids)
    by_name = {r["image_id"]: r for r in rows}
    png0 = by_name["img0"]
    assert png0["patient"] == "pat0" and png0["view"] == "PA" and png0["known_findings"]["lung opacity"] == 1
    assert png0["sex"] == "F" and png0["age"] == 30
    assert len(png0["boxes"]) == 18 and png0["boxes"][17] is None and png0["box_source"] == "atlas"
    dicom = [r for r in rows if r["format"] == "dicom"]
    assert len(dicom) == 4 and {r["view"] for r in dicom} == {"PA", "AP"}
    assert all(r["age"] == 45 and r["sex"] == "F" for r in dicom)
    assert catalog.thumbnail(ids[0]).startswith(b"\x89PNG")
    region = catalog.region_embeddings(ids[:2])
    assert region.shape == (2, 18, 8)
    with pytest.raises(UnknownImageError):
        catalog.images([10_000])


def test_search_filters_and_exclusions(indexed):
    _, _, index_dir, _ = indexed
    catalog = Catalog.open(None, index_dir)
    ids = catalog.index.ids
    query = catalog.vectors(ids[:1])
    me = catalog.images([int(ids[0])])[0]
    hits = catalog.search(query, k=20, exclude_patients=[me["patient"]])[0]
    assert hits and all(catalog.images([h.image_id])[0]["patient"] != me["patient"] for h in hits)
    hits = catalog.search(query, k=20, exclude_ids=[int(ids[0])])[0]
    assert int(ids[0]) not in [h.image_id for h in hits] and len(hits) == 9
    for flt, check in [({"view": "AP"}, lambda r: r["view"] == "AP"),
                       ({"sex": "M"}, lambda r: r["sex"] == "M"),
                       ({"age_min": 32, "age_max": 34}, lambda r: r["age"] is not None and 32 <= r["age"] <= 34),
                       ({"finding": "atelectasis"}, lambda r: r["known_findings"] is None or r["known_findings"]["atelectasis"] == 1)]:
        hits = catalog.search(query, k=20, filters=flt)[0]
        assert hits, flt
        assert all(check(r) for r in catalog.images([h.image_id for h in hits])), flt
    with pytest.raises(Exception, match="valid"):
        catalog.search(query, k=5, filters={"colour": "red"})
    with pytest.raises(Exception, match="pleural effusion"):
        catalog.search(query, k=5, filters={"finding": "bogus"})


def test_rerun_adds_nothing_and_new_files_only(indexed, fake_embedder):
    root, _, index_dir, _first = indexed
    before = Catalog.open(None, index_dir).build_id
    again = run_index(root, embedder=fake_embedder, index_dir=index_dir, progress=False)
    assert again.indexed == 0 and again.unchanged == again.discovered == 13
    assert Catalog.open(None, index_dir).build_id == before  # nothing changed: no new build
    calls = fake_embedder.calls
    write_png(root / "png/new/extra1.png", 777)
    write_dicom(root / "dcm/extra2.dcm", 778, view="PA")
    third = run_index(root, embedder=fake_embedder, index_dir=index_dir, progress=False)
    assert third.indexed == 2 and third.unchanged == 13
    assert fake_embedder.calls == calls + 1
    catalog = Catalog.open(None, index_dir)
    assert catalog.size == 12
    assert verify(_sessions(index_dir), index_dir) == []


def test_changed_file_replaces_old_content(indexed, fake_embedder):
    root, written, index_dir, _ = indexed
    target = written["png"][3]
    write_png(target, 4242)
    os.utime(target, ns=(1, 2_000_000_000))
    summary = run_index(root, embedder=fake_embedder, index_dir=index_dir, progress=False)
    assert summary.indexed == 1 and summary.replaced == 1
    catalog = Catalog.open(None, index_dir)
    assert catalog.size == 10
    assert verify(_sessions(index_dir), index_dir) == []


def test_verify_catches_disagreement_and_remove(indexed):
    _, _, index_dir, _ = indexed
    sessions = _sessions(index_dir)
    with sessions() as s:
        row = s.scalars(select(Image).where(Image.status == "indexed")).first()
        row.embedding = (-np.frombuffer(row.embedding, np.float32)).tobytes()
        s.commit()
        victim = row.id
    problems = verify(sessions, index_dir)
    assert any("differ" in p for p in problems) and any("db_state" not in p for p in problems)
    with sessions() as s:  # restore, then break the other way: a row the index lacks
        row = s.get(Image, victim)
        row.embedding = (-np.frombuffer(row.embedding, np.float32)).tobytes()
        s.commit()
    assert verify(sessions, index_dir) == []
    assert remove_images(sessions, index_dir, [victim]) == 1
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(None, index_dir)
    assert catalog.size == 9 and victim not in catalog.index.ids
    with sessions() as s:
        s.get(Image, victim).status = "indexed"
        s.commit()
    problems = verify(sessions, index_dir)
    assert any("missing from the index" in p for p in problems)


def test_removed_images_stay_removed_on_rerun(indexed, fake_embedder):
    root, _, index_dir, _ = indexed
    sessions = _sessions(index_dir)
    remove_images(sessions, index_dir, ["img2"])
    summary = run_index(root, embedder=fake_embedder, index_dir=index_dir, progress=False)
    assert summary.indexed == 0
    assert Catalog.open(None, index_dir).size == 9


def test_dedupe_by_sop_instance_uid(tmp_path, fake_embedder):
    root = tmp_path / "a"
    write_dicom(root / "x1.dcm", 1, sop_uid="1.2.3.4.5")
    write_dicom(root / "x2.dcm", 2, sop_uid="1.2.3.4.5")  # same UID, other pixels
    summary = run_index(root, embedder=fake_embedder, index_dir=tmp_path / "i", progress=False)
    assert summary.indexed == 1 and summary.duplicates == 1


def test_pseudonymisation(archive, tmp_path, fake_embedder, monkeypatch):
    from chextriev.io.deid import Deidentifier
    from chextriev.io.fields import uid_problem
    from indexer.decode import IngestPolicy

    root, _ = archive
    monkeypatch.delenv("CHEXTRIEV_PSEUDONYM_KEY", raising=False)
    with pytest.raises(Exception, match="needs a key"):
        Deidentifier.from_env_or_file()
    monkeypatch.setenv("CHEXTRIEV_PSEUDONYM_KEY", "secret-key")
    run_index(root, embedder=fake_embedder, index_dir=tmp_path / "p",
              policy=IngestPolicy(Deidentifier.from_env_or_file()), progress=False)
    with _sessions(tmp_path / "p")() as s:
        keys = set(s.scalars(select(Patient.key)))
        uids = s.execute(select(Image.study_instance_uid, Image.series_instance_uid,
                                Image.sop_instance_uid).where(Image.format == "dicom")).all()
    # keyed UIDs in the 2.25.<int> form, valid DICOM UIDs
    assert uids and all(u.startswith("2.25.") and uid_problem(u) is None for row in uids for u in row)
    assert "pat0" not in keys and "DP0" not in keys
    pseudo = Pseudonymiser(b"secret-key")  # patient pseudonyms are those of earlier versions
    assert pseudo("pat0") in keys and len(pseudo("pat0")) == 32
    assert Pseudonymiser(b"other")("pat0") != pseudo("pat0")
