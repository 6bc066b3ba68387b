"""The one builder of small DICOM datasets for the tests: a frontal DX (Secondary Capture) with
file meta, any stored pixel array and any tags. Used by tests/io (``iofiles``), tests/indexer
(``indexer_fakes``) and ``hostile_files`` (tests/ is on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

_DTYPES = {(16, False): "<u2", (16, True): "<i2", (8, False): "u1"}


def make_dicom(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    bits_allocated: int = 16,
    signed: bool = False,
    transfer_syntax=ExplicitVRLittleEndian,
    sop_uid: str | None = None,
    **tags,
) -> Dataset:
    """A DICOM dataset holding ``stored`` (H, W) integer values (Rows x Columns), with the
    given tags set after the defaults (a tag given as ``None`` is left out)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT001"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20240102"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    dtype = _DTYPES[(bits_allocated, signed)]
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    return ds


def write_dicom(path: Path, ds: Dataset, *, preamble: bool = True) -> Path:
    """``ds`` saved as Explicit VR Little Endian (with the 128-byte preamble and file meta
    unless ``preamble=False``)."""
    ds.save_as(path, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools' ``dciodvfy`` for a DICOM file (it exits 0 either way),
    or fails the test with the reason when dciodvfy is not installed (CI installs it; skipped
    elsewhere unless CHEXTRIEV_REQUIRE_DCIODVFY=1)."""
    import os
    import shutil
    import subprocess

    import pytest

    tool = shutil.which("dciodvfy")
    if tool is None:
        reason = "dciodvfy is not installed (apt-get install dicom3tools)"
        if os.environ.get("CHEXTRIEV_REQUIRE_DCIODVFY") == "1":
            pytest.fail(f"CHEXTRIEV_REQUIRE_DCIODVFY=1 but {reason}")
        pytest.skip(reason)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
