"""End to end on a tiny archive with the fake embedder, on SQLite and on PostgreSQL: counts,
self-search, reruns, changes, dedupe, non-frontal skip, broken files, verify, remove,
pseudonymisation, compact thumbnails."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from indexer_fakes import FakeEmbedder, open_sessions, write_dicom, write_png
from PIL import Image as PILImage
from sqlalchemy import func, select

from indexer.catalog import Catalog, UnknownImageError
from indexer.db import Image, Patient, Pseudonymiser, Source
from indexer.pipeline import run_index
from indexer.sync import remove_images
from indexer.verify import verify


def _status_counts(indexed):
    with indexed.sessions()() as s:
        return dict(s.execute(select(Image.status, func.count()).group_by(Image.status)).all())


def test_first_run_counts_and_reasons(indexed):
    index_dir, summary = indexed.index_dir, indexed.summary
    # 6 PNG + 4 DICOM frontal; the duplicate is indexed once; lateral skipped; broken failed.
    assert summary.indexed == 10
    assert summary.duplicates == 1
    assert summary.skipped == 1 and summary.failed == 1
    assert any("non-frontal view LL" in r for r in summary.reasons)
    assert _status_counts(indexed) == {"indexed": 10, "skipped": 1, "failed": 1}
    with indexed.sessions()() as s:
        assert s.scalar(select(func.count(Source.id))) == 13  # every file is in the ledger
        failed = s.scalars(select(Image).where(Image.status == "failed")).one()
        assert failed.source_path.endswith("broken.png") and failed.reason
        slots = sorted(s.scalars(select(Image.vector_slot).where(Image.status == "indexed")))
        assert slots == list(range(10))  # one vector store row per indexed image
    assert verify(indexed.sessions(), index_dir) == []


def test_self_search_and_metadata(indexed):
    index_dir = indexed.index_dir
    catalog = Catalog.open(indexed.db_url, index_dir)
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
    stored, mimetype = catalog.thumbnail_bytes(ids[0])  # stored once as the worker encoded it
    assert mimetype == "image/jpeg" and stored.startswith(b"\xff\xd8") and len(stored) < 4096
    with PILImage.open(io.BytesIO(stored)) as thumbnail:
        assert thumbnail.mode == "L" and thumbnail.size == (64, 64)  # a 64 px archive image: never enlarged
    region = catalog.region_embeddings(ids[:2])
    assert region.shape == (2, 18, 8)
    expected = FakeEmbedder()([np.asarray(pixels_of(by_name["img0"]["source_path"]))])
    got = catalog.region_embeddings([by_name["img0"]["id"]])[0]
    np.testing.assert_allclose(got, expected.region_embeddings[0], atol=0.01)  # int8 codes
    np.testing.assert_allclose(catalog.vectors([by_name["img0"]["id"]])[0],
                               expected.embeddings[0], atol=1e-5)  # exact float32
    assert catalog.status(ids[:1] + [10_000]) == {ids[0]: "indexed"}
    with pytest.raises(UnknownImageError):
        catalog.images([10_000])


def pixels_of(path):  # the pixels the indexer hands the model (THE image contract)
    from chextriev.io.images import load_image
    from chextriev.io.pixels import model_pixels

    return model_pixels(load_image(path), FakeEmbedder.max_input_side).pixels


def test_search_filters_and_exclusions(indexed):
    catalog = Catalog.open(indexed.db_url, indexed.index_dir)
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
    root, index_dir, url = indexed.root, indexed.index_dir, indexed.db_url
    before = Catalog.open(url, index_dir).build_id
    segments = sorted(p.name for p in (index_dir / "segments").iterdir())
    again = run_index(root, embedder=fake_embedder, index_dir=index_dir, db_url=url,
                      progress=False)
    assert again.indexed == 0 and again.unchanged == again.discovered == 13
    assert Catalog.open(url, index_dir).build_id == before  # nothing changed: no new build
    calls = fake_embedder.calls
    write_png(root / "png/new/extra1.png", 777)
    write_dicom(root / "dcm/extra2.dcm", 778, view="PA")
    third = run_index(root, embedder=fake_embedder, index_dir=index_dir, db_url=url,
                      progress=False)
    assert third.indexed == 2 and third.unchanged == 13
    assert fake_embedder.calls == calls + 1
    catalog = Catalog.open(url, index_dir)
    assert catalog.size == 12
    # Incremental: the old segment files are still there, one new segment holds the 2 images.
    assert len(catalog.manifest.segments) == 2
    assert {s["n"] for s in catalog.manifest.segments} == {10, 2}
    assert set(segments) <= {p.name for p in (index_dir / "segments").iterdir()}
    assert verify(indexed.sessions(), index_dir) == []


def test_changed_file_replaces_old_content(indexed, fake_embedder):
    root, index_dir, url = indexed.root, indexed.index_dir, indexed.db_url
    target = indexed.written["png"][3]
    write_png(target, 4242)
    os.utime(target, ns=(1, 2_000_000_000))
    summary = run_index(root, embedder=fake_embedder, index_dir=index_dir, db_url=url,
                        progress=False)
    assert summary.indexed == 1 and summary.replaced == 1
    catalog = Catalog.open(url, index_dir)
    assert catalog.size == 10
    assert verify(indexed.sessions(), index_dir) == []


def test_verify_catches_disagreement_and_remove(indexed):
    index_dir, sessions = indexed.index_dir, indexed.sessions()
    with sessions() as s:
        rows = s.scalars(select(Image).where(Image.status == "indexed").order_by(Image.id)).all()
        victim, other = rows[0], rows[1]
        victim_slot, other_slot = victim.vector_slot, other.vector_slot
        victim.vector_slot, other.vector_slot = None, None  # swap the two rows' vectors
        s.flush()
        victim.vector_slot, other.vector_slot = other_slot, victim_slot
        s.commit()
        victim = victim.id
    problems = verify(sessions, index_dir)
    assert any("vector store slot" in p for p in problems), problems
    with sessions() as s:  # restore, then break the other way: a row the index lacks
        a, b = s.get(Image, victim), s.get(Image, other.id)
        a.vector_slot, b.vector_slot = None, None
        s.flush()
        a.vector_slot, b.vector_slot = victim_slot, other_slot
        s.commit()
    assert verify(sessions, index_dir) == []
    assert remove_images(sessions, index_dir, [victim]) == 1
    assert verify(sessions, index_dir) == []
    catalog = Catalog.open(indexed.db_url, index_dir)
    assert catalog.size == 9 and victim not in catalog.index.ids
    assert catalog.status([victim]) == {victim: "removed"}
    with sessions() as s:
        s.get(Image, victim).status = "indexed"
        s.commit()
    problems = verify(sessions, index_dir)
    assert any("missing from the index" in p for p in problems)


def test_removed_images_stay_removed_on_rerun(indexed, fake_embedder):
    index_dir, url = indexed.index_dir, indexed.db_url
    remove_images(indexed.sessions(), index_dir, ["img2"])
    summary = run_index(indexed.root, embedder=fake_embedder, index_dir=index_dir, db_url=url,
                        progress=False)
    assert summary.indexed == 0
    assert Catalog.open(url, index_dir).size == 9


def test_dedupe_by_sop_instance_uid(tmp_path, fake_embedder, catalog_url):
    root = tmp_path / "a"
    write_dicom(root / "x1.dcm", 1, sop_uid="1.2.3.4.5")
    write_dicom(root / "x2.dcm", 2, sop_uid="1.2.3.4.5")  # same UID, other pixels
    write_dicom(root / "x3.dcm", 1, sop_uid="1.2.3.4.6")  # other UID, other file
    summary = run_index(root, embedder=fake_embedder, index_dir=tmp_path / "i",
                        db_url=catalog_url, batch_size=8, progress=False)
    assert summary.indexed == 2 and summary.duplicates == 1
    with open_sessions(tmp_path / "i", catalog_url)() as s:
        assert s.scalar(select(func.count(Source.id))) == 3


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
    with open_sessions(tmp_path / "p")() as s:
        keys = set(s.scalars(select(Patient.key)))
        uids = s.execute(select(Image.study_instance_uid, Image.series_instance_uid,
                                Image.sop_instance_uid).where(Image.format == "dicom")).all()
    # keyed UIDs in the 2.25.<int> form, valid DICOM UIDs
    assert uids and all(u.startswith("2.25.") and uid_problem(u) is None for row in uids for u in row)
    assert "pat0" not in keys and "DP0" not in keys
    pseudo = Pseudonymiser(b"secret-key")  # patient pseudonyms are those of earlier versions
    assert pseudo("pat0") in keys and len(pseudo("pat0")) == 32
    assert Pseudonymiser(b"other")("pat0") != pseudo("pat0")


def test_catalog_reload_swaps_in_the_newest_build(indexed, fake_embedder):
    catalog = Catalog.open(indexed.db_url, indexed.index_dir)
    assert catalog.reload() is False  # nothing newer
    old_build, old_size = catalog.build_id, catalog.size
    write_png(indexed.root / "png/new/later.png", 4321)
    run_index(indexed.root, embedder=fake_embedder, index_dir=indexed.index_dir,
              db_url=indexed.db_url, progress=False)
    assert catalog.size == old_size and catalog.build_id == old_build  # still the old snapshot
    assert catalog.reload() is True
    assert catalog.size == old_size + 1 and catalog.build_id != old_build
    new_id = catalog.lookup("png/new/later")  # a folder image's id: its relative path
    hits = catalog.search(catalog.vectors([new_id]), k=1)
    assert hits[0][0].image_id == new_id
