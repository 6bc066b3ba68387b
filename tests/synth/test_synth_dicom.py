"""DICOM tags, both photometric interpretations, and pixels equal to the PNG drawing."""

from __future__ import annotations

import numpy as np
import pydicom
from PIL import Image

from chextriev.io.synthetic import read_archive
from chextriev.synth.dicom_out import dicom_pixels_as_drawing

TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ViewPosition", "Modality",
        "StudyDate", "PatientSex", "PatientAge", "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")


def test_dicom_share_matches_png_drawing(tmp_path, archive_factory):
    # the drawing does not depend on the output format: same seed with all-DICOM vs all-16-bit PNG
    dcm = archive_factory(tmp_path / "d", seed=9, patients=4, size=64, dicom_share=1.0)
    png = archive_factory(tmp_path / "p", seed=9, patients=4, size=64, dicom_share=0.0, png16_share=1.0)
    dicom_records, png_records = read_archive(dcm), read_archive(png)
    photometric = set()
    for d, p in zip(dicom_records, png_records):
        assert d.image_id == p.image_id and d.meta["format"] == "dicom" and p.meta["format"] == "png16"
        ds = pydicom.dcmread(d.source)
        for tag in TAGS:
            assert tag in ds, tag
        assert ds.file_meta.MediaStorageSOPClassUID in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1")
        assert ds.PatientID == d.patient_id and ds.ViewPosition == d.view and ds.StudyDate == d.meta["study_date"]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored) == (64, 64, 16, 12)
        assert ds.pixel_array.max() <= 4095
        photometric.add(ds.PhotometricInterpretation)
        drawing = np.asarray(Image.open(p.source), dtype=np.float32) / 65535.0
        assert np.abs(dicom_pixels_as_drawing(ds) - drawing).max() <= 1.0 / 4095 + 1e-6
        # MONOCHROME1 stores dense (bright) parts as low values
        raw = ds.pixel_array.astype(np.float32)
        corr = np.corrcoef(raw.ravel(), drawing.ravel())[0, 1]
        assert corr < -0.99 if ds.PhotometricInterpretation == "MONOCHROME1" else corr > 0.99
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    uids = [pydicom.dcmread(r.source).SOPInstanceUID for r in dicom_records]
    assert len(set(uids)) == len(uids)
