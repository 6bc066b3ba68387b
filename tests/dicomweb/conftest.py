"""Fixtures of the DICOMweb tests: a real Orthanc with its DICOMweb plugin (session scope, own
temporary storage, basic auth), a counting proxy in front of it, and DICOM files to upload
(a synthetic archive's DICOM share, a lateral view, and a JPEG Lossless file from pydicom's test
files). Skipped with the reason when Orthanc is not installed, unless CHEXTRIEV_REQUIRE_ORTHANC=1
(CI), where its absence fails."""

from __future__ import annotations

import argparse
import io
import os

import pytest
from dicomweb_helpers import PASSWORD, USER, OrthancServer, Proxy, orthanc_missing


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory):
    reason = orthanc_missing()
    if reason:
        if os.environ.get("CHEXTRIEV_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_ORTHANC=1 but {reason}")
        pytest.skip(reason)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server):
    """The running Orthanc, emptied (restarted first if a test stopped it)."""
    if orthanc_server.process is None or orthanc_server.process.poll() is not None:
        orthanc_server.start()
    orthanc_server.clear()
    yield orthanc_server
    if orthanc_server.process is None or orthanc_server.process.poll() is not None:
        orthanc_server.start()


@pytest.fixture(scope="session")
def proxy_server(orthanc_server):
    proxy = Proxy(orthanc_server.port, upstream_auth=(USER, PASSWORD))
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(proxy_server, orthanc):
    proxy_server.reset()
    yield proxy_server
    proxy_server.reset()


@pytest.fixture
def basic():
    from chextriev.io.dicomweb import Credentials

    return Credentials.basic(USER, PASSWORD)


@pytest.fixture(scope="session")
def synthetic_dicoms(tmp_path_factory) -> list[bytes]:
    """The DICOM files of a tiny synthetic archive (`chextriev synth`, every image DICOM)."""
    from chextriev.synth.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path_factory.mktemp("synth") / "archive"
    args = parser.parse_args(["synth", "--out", str(out), "--patients", "3", "--seed", "5",
                              "--size", "64", "--dicom-share", "1.0"])
    assert args.func(args) == 0
    files = sorted((out / "files").rglob("*.dcm"))
    assert len(files) >= 4
    return [p.read_bytes() for p in files]


def _encode(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def lateral_dicom(synthetic_dicoms) -> bytes:
    """A synthetic DICOM turned into a lateral view (new UIDs)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(io.BytesIO(synthetic_dicoms[0]))
    ds.ViewPosition = "LL"
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return _encode(ds)


@pytest.fixture(scope="session")
def compressed_dicom() -> bytes:
    """pydicom's JPEG Lossless SV1 test file (SC_rgb_jpeg_gdcm.dcm) as a frontal DX image."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm", download=False))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ds.Modality, ds.ViewPosition, ds.PatientID = "DX", "PA", "JLL-PATIENT"
    return _encode(ds)
