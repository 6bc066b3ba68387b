"""DICOM round trips written with pydicom; pixel values checked against the standard's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_files import make_dicom, write_dicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from chextriev.errors import ImageReadError
from chextriev.io.dicom import dicom_metadata, is_dicom, parse_dicom_age, window_to_unit
from chextriev.io.images import image_size, load_image, read_image

VALUES = np.array(
    [[0, 100, 1000, 1535], [1536, 2048, 2559, 2560], [3000, 3500, 4000, 4095]], np.uint16
)


def _minmax(v):
    v = v.astype(np.float64)
    return (v - v.min()) / (v.max() - v.min())


def test_monochrome2_12_in_16_masks_high_bits(dicom_factory):
    dirty = VALUES | np.uint16(0xF000)  # garbage above BitsStored must be ignored
    path = dicom_factory("m2.dcm", dirty, bits_stored=12)
    loaded = read_image(path)
    assert loaded.format == "dicom" and loaded.pixels.dtype == np.float32
    np.testing.assert_allclose(loaded.pixels, _minmax(VALUES), atol=1e-6)


def test_monochrome1_is_inverted(dicom_factory):
    path = dicom_factory("m1.dcm", VALUES, photometric="MONOCHROME1")
    np.testing.assert_allclose(load_image(path), 1.0 - _minmax(VALUES), atol=1e-6)


def test_window_linear_first_of_multivalue(dicom_factory):
    # PS3.3 C.11.2.1.2.1: c=2048, w=1025 -> 0 below 1535.5, 1 above 2559.5, linear between
    path = dicom_factory("w.dcm", VALUES, WindowCenter=[2048, 100], WindowWidth=[1025, 50])
    x = VALUES.astype(np.float64)
    expected = np.where(x <= 1535.5, 0.0, np.where(x > 2559.5, 1.0, (x - 2047.5) / 1024 + 0.5))
    out = load_image(path)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 3] == 0.0 and out[2, 0] == 1.0 and 0.49 < out[1, 1] < 0.51


def test_rescale_then_window_monochrome1(dicom_factory):
    path = dicom_factory(
        "r.dcm", VALUES, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1024,
        WindowCenter=0, WindowWidth=2000, VOILUTFunction="LINEAR_EXACT",
    )  # fmt: skip
    hu = 2.0 * VALUES - 1024
    expected = 1.0 - np.clip(hu / 2000 + 0.5, 0, 1)
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_signed_pixels(dicom_factory):
    stored = np.array([[-2048, -1], [0, 2047]], np.int16)
    path = dicom_factory("s.dcm", stored, signed=True, bits_stored=12)
    np.testing.assert_allclose(load_image(path), _minmax(stored), atol=1e-6)


def test_voi_lut_sequence(dicom_factory, tmp_path):
    ds = make_dicom(np.array([[0, 1], [2, 3]], np.uint16), bits_stored=12)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUTDescriptor: 4 entries from 0, 8 bits
    item.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUTData
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 1, 1  # the LUT wins over the window
    out = load_image(write_dicom(tmp_path / "lut.dcm", ds))
    np.testing.assert_allclose(out, np.array([[0, 50], [200, 255]]) / 255.0, atol=1e-6)


def test_window_functions_formulas():  # float32 arithmetic: relative error below 1e-6
    x = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(window_to_unit(x, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(window_to_unit(x, 50, 100, "SIGMOID")[1], 0.5)
    np.testing.assert_allclose(window_to_unit(x, 50, 100, "SIGMOID")[0], 1 / (1 + np.exp(2.0)),
                               rtol=1e-6)
    np.testing.assert_allclose(window_to_unit(x, 50, 1, "LINEAR"), [0.0, 1.0, 1.0])


def test_metadata_and_detection(dicom_factory, tmp_path):
    path = dicom_factory("noext", VALUES)
    loaded = read_image(path)
    for key in (
        "PatientID",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "SeriesInstanceUID",
        "ViewPosition",
        "StudyDate",
        "PatientSex",
        "PatientAge",
        "Modality",
    ):
        assert loaded.meta[key] is not None, key
    assert loaded.meta["PatientID"] == "PAT001" and loaded.meta["ViewPosition"] == "PA"
    fast = dicom_metadata(path)
    assert fast["SOPInstanceUID"] == loaded.meta["SOPInstanceUID"] and fast["Rows"] == 3
    assert (
        is_dicom(path)
        and is_dicom(path.read_bytes())
        and not is_dicom(b"\x89PNG\r\n\x1a\n" + b"0" * 200)
    )
    assert image_size(path) == (3, 4)
    assert (
        parse_dicom_age("045Y") == 45.0
        and parse_dicom_age("006M") == 0.5
        and parse_dicom_age("") is None
    )


def test_dicom_without_preamble(tmp_path):
    ds = make_dicom(VALUES)
    path = write_dicom(tmp_path / "raw.dcm", ds, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(path)
    np.testing.assert_allclose(load_image(path.read_bytes()), _minmax(VALUES), atol=1e-6)


def test_no_pixel_data(tmp_path):
    ds = make_dicom(VALUES)
    del ds.PixelData
    path = write_dicom(tmp_path / "sr.dcm", ds)
    with pytest.raises(ImageReadError, match="no pixel data") as err:
        load_image(path)
    assert err.value.source == str(path)


def test_rle_and_deflate_work_out_of_the_box(tmp_path):
    ds = make_dicom(VALUES)
    ds.compress(RLELossless)
    out = load_image(write_dicom(tmp_path / "rle.dcm", ds))
    np.testing.assert_allclose(out, _minmax(VALUES), atol=1e-6)
    ds = make_dicom(VALUES, transfer_syntax=DeflatedExplicitVRLittleEndian)
    path = tmp_path / "deflate.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_image(path).meta["TransferSyntaxUID"] == DeflatedExplicitVRLittleEndian
    np.testing.assert_allclose(load_image(path), _minmax(VALUES), atol=1e-6)
