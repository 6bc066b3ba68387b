"""Writers of small files in the real formats (DICOM datasets, ImaGenome scene graphs) for tests/io."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from chextriev.vocab import REGIONS


def make_dicom(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    bits_allocated: int = 16,
    signed: bool = False,
    transfer_syntax=ExplicitVRLittleEndian,
    **tags,
) -> Dataset:
    """A DICOM dataset holding ``stored`` (H, W) integer values, with the given tags."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
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
        setattr(ds, key, value)
    dtype = {(16, False): "<u2", (16, True): "<i2", (8, False): "u1"}[(bits_allocated, signed)]
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    return ds


def write_dicom(path: Path, ds: Dataset, *, preamble: bool = True) -> Path:
    ds.save_as(path, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return path


def scene_graph(
    image_id: str,
    boxes: dict[str, tuple[float, float, float, float]],
    attributes: dict[str, list[list[str]]],
    **extra,
) -> dict:
    """A Chest ImaGenome scene-graph dict with ``objects`` for ``boxes`` and ``attributes``."""
    objects = []
    for name, (x1, y1, x2, y2) in boxes.items():
        objects.append(
            {
                "object_id": f"{image_id}_{name}",
                "bbox_name": name,
                "name": name.capitalize(),
                "x1": int(x1 * 224 / 512), "y1": int(y1 * 224 / 512),
                "x2": int(x2 * 224 / 512), "y2": int(y2 * 224 / 512),
                "original_x1": x1, "original_y1": y1, "original_x2": x2, "original_y2": y2,
                "original_width": x2 - x1, "original_height": y2 - y1,
            }
        )  # fmt: skip
    attrs = [
        {
            "bbox_name": name,
            name: True,
            "attributes": lists,
            "phrases": [f"phrase {i}" for i in range(len(lists))],
        }
        for name, lists in attributes.items()
    ]
    graph = {
        "image_id": image_id,
        "patient_id": 10000032,
        "study_id": 50414267,
        "viewpoint": "PA",
        "objects": objects,
        "attributes": attrs,
        "relationships": [],
    }
    graph.update(extra)
    return graph


def full_boxes() -> dict[str, tuple[float, float, float, float]]:
    """A valid box for each of the 18 regions (distinct, inside 512x512)."""
    return {name: (10.0 + i, 20.0 + i, 200.0 + i, 300.0 + i) for i, name in enumerate(REGIONS)}
