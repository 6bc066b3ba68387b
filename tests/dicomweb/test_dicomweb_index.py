"""Indexing from a real Orthanc over DICOMweb (QIDO-RS + WADO-RS through dicomweb-client):
synthetic and JPEG Lossless DICOMs, the view rule before any retrieve, incremental reruns that
fetch only new instances (WADO requests counted by a real proxy), one instance failing with 500
or 404, Orthanc stopped mid-run, kill -9, credentials and unreachable services."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from child_env import child_env
from dicomweb_helpers import PASSWORD, USER, free_port
from indexer_fakes import FakeEmbedder
from sqlalchemy import func, select

from chextriev.errors import SourceAuthError, SourceUnavailableError
from chextriev.io.dicomweb import Credentials
from indexer.catalog import Catalog
from indexer.db import Image, Source, default_db_url
from indexer.engine import make_engine, make_sessionmaker
from indexer.pipeline import run_index
from indexer.verify import verify

REPO = Path(__file__).resolve().parents[2]


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _sessions(index_dir):
    return make_sessionmaker(make_engine(default_db_url(index_dir)))


def _index(url, index_dir, credentials, **kwargs):
    options = {"credentials": credentials, **kwargs.pop("source_options", {})}
    return run_index(url, embedder=kwargs.pop("embedder", None) or FakeEmbedder(),
                     index_dir=index_dir, progress=False, source_options=options, **kwargs)


def test_index_from_orthanc_then_only_new_instances(orthanc, proxy, basic, synthetic_dicoms,
                                                    lateral_dicom, compressed_dicom, tmp_path):
    first, later = synthetic_dicoms[:-2], synthetic_dicoms[-2:]
    for data in [*first, lateral_dicom, compressed_dicom]:
        orthanc.upload(data)
    index_dir = tmp_path / "idx"
    summary = _index(proxy.dicomweb, index_dir, basic, workers=2, batch_size=2)
    n = len(first) + 1  # the synthetic frontal images and the JPEG Lossless one
    assert summary.indexed == n and summary.skipped == 1 and summary.failed == 0
    assert any("non-frontal view LL" in reason for reason in summary.reasons)
    assert proxy.counts["wado"] == n  # the lateral was skipped from its QIDO-RS attributes
    assert verify(_sessions(index_dir), index_dir) == []
    catalog = Catalog.open(None, index_dir)
    rows = {r["image_id"]: r for r in catalog.images(catalog.index.ids.tolist())}
    study, series, sop = _uids(compressed_dicom)
    assert rows[sop]["format"] == "dicom" and rows[sop]["patient"] == "JLL-PATIENT"
    with _sessions(index_dir)() as session:
        image = session.scalars(select(Image).where(Image.sop_instance_uid == sop)).one()
        assert (image.study_instance_uid, image.series_instance_uid) == (study, series)
        assert image.source_path == f"dicomweb:{proxy.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
        assert session.scalar(select(func.count(Source.id))) == n + 1

    proxy.reset()
    again = _index(proxy.dicomweb, index_dir, basic)
    assert again.indexed == 0 and again.unchanged == n + 1 and proxy.counts["wado"] == 0

    for data in later:
        orthanc.upload(data)
    proxy.reset()
    third = _index(proxy.dicomweb, index_dir, basic)
    assert third.indexed == len(later) and proxy.counts["wado"] == len(later)
    assert Catalog.open(None, index_dir).size == n + len(later)
    assert verify(_sessions(index_dir), index_dir) == []


def test_one_instance_500_and_one_404_then_retried(orthanc, proxy, basic, synthetic_dicoms,
                                                   tmp_path):
    for data in synthetic_dicoms:
        orthanc.upload(data)
    broken, missing = _uids(synthetic_dicoms[0])[2], _uids(synthetic_dicoms[1])[2]
    proxy.fail = {f"/instances/{broken}": 500, f"/instances/{missing}": 404}
    index_dir = tmp_path / "idx"
    summary = _index(proxy.dicomweb, index_dir, basic, batch_size=2)
    assert summary.failed == 2 and summary.indexed == len(synthetic_dicoms) - 2
    reasons = " ".join(summary.reasons)
    assert "HTTP 500" in reasons and "HTTP 404" in reasons
    with _sessions(index_dir)() as session:
        failed = session.scalars(select(Image).where(Image.status == "failed")).all()
        assert {f.reason.split(" from")[0] for f in failed} == {
            "HTTP 500 Internal Server Error", "HTTP 404 Not Found"}
        assert all(broken in f.source_path or missing in f.source_path for f in failed)
    proxy.fail = {}
    proxy.reset()
    rerun = _index(proxy.dicomweb, index_dir, basic)  # failed instances are fetched again
    assert rerun.indexed == 2 and proxy.counts["wado"] == 2
    with _sessions(index_dir)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(synthetic_dicoms)
        assert session.scalar(select(func.count(Image.id)).where(Image.status == "indexed")) == \
            len(synthetic_dicoms)
    assert verify(_sessions(index_dir), index_dir) == []


def test_pseudonymised_catalog_holds_no_uid_and_reruns_fetch_only_new_instances(
        orthanc, proxy, basic, synthetic_dicoms, tmp_path):
    """--pseudonymise from a PACS: the catalog file and its WAL (bytes) hold none of the
    instances' UIDs, patient ids or the service's URL, the ledger's keyed hashes still let a
    rerun fetch only new instances and the one that failed."""
    import sqlite3

    from chextriev.io.deid import Deidentifier
    from indexer.decode import IngestPolicy

    first, later = synthetic_dicoms[:-2], synthetic_dicoms[-2:]
    for data in first:
        orthanc.upload(data)
    broken = _uids(first[0])[2]
    proxy.fail = {f"/instances/{broken}": 500}
    policy = IngestPolicy(Deidentifier(b"dicomweb-ledger-key"))
    index_dir = tmp_path / "idx"
    summary = _index(proxy.dicomweb, index_dir, basic, workers=2, batch_size=2, policy=policy)
    assert summary.indexed == len(first) - 1 and summary.failed == 1
    raw = {proxy.dicomweb, orthanc.dicomweb}
    for data in synthetic_dicoms:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        raw |= {*_uids(data), str(ds.PatientID)}
    catalog = index_dir / "catalog.sqlite"
    held = sqlite3.connect(catalog)  # keeps the WAL file, with the rerun's frames, readable
    try:
        held.execute("SELECT count(*) FROM sources").fetchone()
        for data in later:
            orthanc.upload(data)
        proxy.fail = {}
        proxy.reset()
        again = _index(proxy.dicomweb, index_dir, basic, policy=policy)
        assert again.indexed == len(later) + 1 and again.unchanged == len(first) - 1
        assert proxy.counts["wado"] == len(later) + 1  # the new ones and the failed one
        wal = catalog.with_name("catalog.sqlite-wal")
        assert wal.stat().st_size > 0
        for path in (catalog, wal):
            data = path.read_bytes()
            leaked = sorted(value for value in raw if value.encode() in data)
            assert not leaked, (path.name, leaked)
    finally:
        held.close()
    with _sessions(index_dir)() as session:
        assert all(key.startswith("pseudonym:") and ":uri:" in key
                   for key in session.scalars(select(Source.path)))
    assert verify(_sessions(index_dir), index_dir) == []


class StopAfterFirstBatch(FakeEmbedder):
    """Stops Orthanc once the first batch is embedded (mid-run, deterministically)."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def __call__(self, images, boxes=None):
        out = super().__call__(images, boxes)
        if self.calls == 1:
            self.server.stop()
        return out


def test_orthanc_stopped_mid_run_then_rerun(orthanc, proxy, basic, synthetic_dicoms, tmp_path):
    for data in synthetic_dicoms:
        orthanc.upload(data)
    index_dir = tmp_path / "idx"
    with pytest.raises(SourceUnavailableError, match="rerun when it is back") as err:
        _index(proxy.dicomweb, index_dir, basic, batch_size=2,
               embedder=StopAfterFirstBatch(orthanc))
    assert PASSWORD not in str(err.value)
    with _sessions(index_dir)() as session:
        done = session.scalar(select(func.count(Image.id)).where(Image.status == "indexed"))
        assert 2 <= done < len(synthetic_dicoms)
        assert session.scalar(select(func.count(Image.id)).where(Image.status == "failed")) == 0
    assert verify(_sessions(index_dir), index_dir) == []  # the index was synced before raising
    orthanc.start()
    proxy.reset()
    summary = _index(proxy.dicomweb, index_dir, basic)
    assert summary.indexed == len(synthetic_dicoms) - done
    assert proxy.counts["wado"] == len(synthetic_dicoms) - done  # nothing fetched twice
    with _sessions(index_dir)() as session:
        assert session.scalar(select(func.count(Image.id))) == len(synthetic_dicoms)
        assert session.scalar(select(func.count(func.distinct(Image.sop_instance_uid)))) == \
            len(synthetic_dicoms)
    assert verify(_sessions(index_dir), index_dir) == []


def test_credentials_and_unreachable_service(orthanc, proxy, synthetic_dicoms, tmp_path, caplog):
    orthanc.upload(synthetic_dicoms[0])
    with pytest.raises(SourceAuthError) as err:
        _index(orthanc.dicomweb, tmp_path / "a", Credentials.basic(USER, "wrong-password-x"))
    assert orthanc.dicomweb in str(err.value) and "wrong-password-x" not in str(err.value)
    with pytest.raises(SourceAuthError, match="none were given"):
        _index(orthanc.dicomweb, tmp_path / "b", None)
    # A bearer token, checked by the proxy (which forwards to Orthanc with its basic account).
    proxy.token = "a-long-bearer-token-0123456789"
    with pytest.raises(SourceAuthError):
        _index(proxy.dicomweb, tmp_path / "c", Credentials.bearer("not-the-token-abcdef"))
    summary = _index(proxy.dicomweb, tmp_path / "d", Credentials.bearer(proxy.token))
    assert summary.indexed == 1
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(SourceUnavailableError, match="unreachable") as err:
        _index(dead, tmp_path / "e", Credentials.bearer(proxy.token))
    assert dead in str(err.value)
    secrets = (proxy.token.encode(), PASSWORD.encode(), b"wrong-password-x")
    for folder in (tmp_path / "d",):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(secret in data for secret in secrets), path
    assert not any(s.decode() in caplog.text for s in secrets)


def test_cli_exits_non_zero_naming_the_url(orthanc, tmp_path, capsys, monkeypatch):
    from chextriev_cli.main import main

    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not used: the source is checked before the model loads")
    password_file = tmp_path / "password"
    password_file.write_text("wrong-password-y\n")
    code = main(["index", "--source", orthanc.dicomweb, "--checkpoint", str(checkpoint),
                 "--index-dir", str(tmp_path / "idx"), "--dicomweb-user", USER,
                 "--dicomweb-password-file", str(password_file), "--no-progress"])
    assert code == 2
    monkeypatch.setenv("CHEXTRIEV_DICOMWEB_TOKEN", "token-from-env-0123456789")
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["index", "--source", dead, "--checkpoint", str(checkpoint),
                 "--index-dir", str(tmp_path / "idx2"), "--no-progress"]) == 2
    assert main(["index", "--source", str(tmp_path), "--checkpoint", str(checkpoint),
                 "--modality", "CR", "--no-progress"]) == 2  # a DICOMweb flag on a folder


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from chextriev.io.dicomweb import Credentials
    from indexer.pipeline import run_index
    from indexer_fakes import FakeEmbedder
    run_index({url!r}, embedder=FakeEmbedder(delay=0.4), index_dir={index_dir!r}, batch_size=1,
              checkpoint_every=1, progress=False,
              source_options={{"credentials": Credentials.basic({user!r}, {password!r})}})
""")


@pytest.mark.slow
def test_sigkill_mid_dicomweb_run_then_rerun(orthanc, proxy, basic, synthetic_dicoms, tmp_path):
    for data in synthetic_dicoms:
        orthanc.upload(data)
    n = len(synthetic_dicoms)
    index_dir = tmp_path / "idx"
    script = KILL_SCRIPT.format(repo=str(REPO), fakes=str(REPO / "tests" / "indexer"),
                                url=proxy.dicomweb, index_dir=str(index_dir), user=USER,
                                password=PASSWORD)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=child_env(),
                               stderr=subprocess.PIPE)
    deadline = time.time() + 90
    count = 0
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
        if (index_dir / "catalog.sqlite").exists():
            try:
                with make_sessionmaker(make_engine(default_db_url(index_dir), create=False))() as s:
                    count = s.scalar(select(func.count(Image.id)))
            except Exception:  # noqa: BLE001 - tables may not exist yet
                count = 0
            if count >= 2:
                break
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with _sessions(index_dir)() as session:
        committed = session.scalar(select(func.count(Source.id)))
    assert 0 < committed < n
    proxy.reset()
    summary = _index(proxy.dicomweb, index_dir, basic)
    assert summary.indexed == n - committed and proxy.counts["wado"] == n - committed
    with _sessions(index_dir)() as session:
        assert session.scalar(select(func.count(Image.id))) == n
        assert session.scalar(select(func.count(Source.id))) == n
    assert verify(_sessions(index_dir), index_dir) == []
