"""Writing one synthetic radiograph as DICOM (Digital X-Ray, 12 bits stored in 16).

Pixel values: ``stored = round(image * 4095)`` for MONOCHROME2 and ``4095 - that`` for
MONOCHROME1 (where high values are dark); the modality LUT is the identity shifted by
``RescaleIntercept`` (stored values are written minus the intercept), and the window covers
the whole range, so a reader applying rescale, window and MONOCHROME1 inversion gets back
the drawing to 1/4095.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
MAX_STORED = 4095


def write_dicom(path: Path, image: np.ndarray, *, patient_id: str, study_uid: str, series_uid: str,
                sop_uid: str, view: str, study_date: str, sex: str, age: int, monochrome1: bool,
                intercept: int, modality: str, study_id: str, accession: str) -> None:
    """Write ``image`` ((H, W) float32 in [0, 1], bright = dense) as a DICOM file."""
    sop_class = DX_FOR_PRESENTATION if modality == "DX" else CR_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "CHEXTRIEV_SYNTH"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTH^{patient_id}"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "000000"
    ds.StudyID = study_id[-8:]
    ds.AccessionNumber = accession
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = ["L", "F"] if view == "PA" else ["R", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = str(intercept + (MAX_STORED + 1) // 2)  # linear window (PS3.3 C.11.2.1.2) = identity
    ds.WindowWidth = str(MAX_STORED + 1)
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    stored = np.round(np.clip(image, 0.0, 1.0) * MAX_STORED).astype(np.uint16)
    if monochrome1:
        stored = (MAX_STORED - stored).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def dicom_pixels_as_drawing(ds: pydicom.Dataset) -> np.ndarray:
    """Inverse of :func:`write_dicom`'s mapping for a file it wrote: (H, W) float32 in [0, 1]."""
    stored = ds.pixel_array.astype(np.float32)
    value = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    out = np.clip((value - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out
