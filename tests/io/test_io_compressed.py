"""Compressed DICOM decodes in a default install, with permissively licensed plugins only.

Every file here is one of pydicom's own bundled test files (``pydicom.data.get_testdata_file``,
read from the installed package; nothing is downloaded). Lossless files are compared with their
uncompressed twin, pixel for pixel, through pydicom's reference decoding and through our display
pipeline; a JPEG Lossless (process 14 SV1) grayscale 16-bit file, the common CR/DX syntax, is
made here from the uncompressed twin by GDCM's encoder.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pydicom
import pytest
from dicom_files import make_dicom, write_dicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder

from chextriev.errors import ImageReadError
from chextriev.io.images import read_image

VALUES = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60


def _bundled(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - pydicom always ships these
        pytest.fail(f"pydicom does not ship {name}")
    return str(path)


# (compressed file, uncompressed twin) with the same pixels; the twin of the JPEG Lossless RGB
# file is pydicom's RLE file of the same image, decoded by pydicom's own RLE decoder.
LOSSLESS_PAIRS = [
    ("MR_small_RLE.dcm", "MR_small.dcm", "1.2.840.10008.1.2.5"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "1.2.840.10008.1.2.4.80"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", "1.2.840.10008.1.2.4.90"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "1.2.840.10008.1.2.4.70"),
]


@pytest.mark.parametrize("compressed,reference,syntax", LOSSLESS_PAIRS)
def test_lossless_syntaxes_equal_their_uncompressed_twin(compressed, reference, syntax):
    ds = pydicom.dcmread(_bundled(compressed))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert get_decoder(ds.file_meta.TransferSyntaxUID).is_available
    twin = pydicom.dcmread(_bundled(reference))
    np.testing.assert_array_equal(ds.pixel_array, twin.pixel_array)  # pydicom's decoding
    ours = read_image(_bundled(compressed))
    assert ours.meta["TransferSyntaxUID"] == syntax
    np.testing.assert_array_equal(ours.pixels, read_image(_bundled(reference)).pixels)


def test_jpeg_lossless_sv1_grayscale_16_bit(tmp_path):
    """Grayscale 16-bit JPEG Lossless SV1 (what CR/DX modalities send), encoded by GDCM from
    the uncompressed twin, decodes to the twin's pixels."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm is a declared dependency")
    reader = gdcm.ImageReader()
    reader.SetFileName(_bundled("MR_small.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    out = tmp_path / "jpeg_lossless_sv1.dcm"
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70" and ds.BitsStored == 16
    twin = pydicom.dcmread(_bundled("MR_small.dcm"))
    np.testing.assert_array_equal(ds.pixel_array, twin.pixel_array)
    np.testing.assert_array_equal(read_image(out).pixels, read_image(_bundled("MR_small.dcm")).pixels)


@pytest.mark.parametrize("name,syntax", [
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
])
def test_lossy_syntaxes_decode(name, syntax):
    path = _bundled(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    reference = ds.pixel_array
    reference = reference[0] if reference.ndim == 3 else reference
    ours = read_image(path).pixels
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert np.isfinite(ours).all() and 0.0 <= ours.min() <= ours.max() <= 1.0
    # Our values are a monotone display mapping of pydicom's: the same ordering of pixels.
    ranks = np.argsort(reference.ravel(), kind="stable")
    assert np.all(np.diff(ours.ravel()[ranks]) >= -1e-6)


def test_jpeg_extended_12_bit_is_a_clear_error():
    """12-bit JPEG Extended needs the GPL pylibjpeg-libjpeg, which is not installed by default:
    the read fails for that file, saying why."""
    with pytest.raises(ImageReadError) as err:
        read_image(_bundled("JPGExtended.dcm"))
    assert "JPEG Extended" in err.value.reason and "12-bit" in err.value.reason


def test_no_gpl_plugin_is_needed():
    """JPEG Lossless decodes without the GPL pylibjpeg-libjpeg (not a dependency)."""
    assert importlib.util.find_spec("libjpeg") is None
    from pydicom.uid import JPEGLosslessSV1

    assert "gdcm" in get_decoder(JPEGLosslessSV1).available_plugins


def test_unknown_transfer_syntax_is_a_clear_per_file_error(tmp_path):
    ds = make_dicom(VALUES, transfer_syntax="1.2.826.0.1.3680043.99.1")
    ds.PixelData = encapsulate([b"\x00" * 32])
    ds["PixelData"].VR = "OB"
    path = write_dicom(tmp_path / "unknown.dcm", ds)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert err.value.source == str(path)
    assert "unknown transfer syntax UID '1.2.826.0.1.3680043.99.1'" in err.value.reason
    # The indexer records it as one failed file and goes on.
    from chextriev.records import Record
    from indexer.decode import FAILED, decode

    decoded = decode(Record(source=path, image_id="unknown"))
    assert decoded.status == FAILED and "unknown transfer syntax" in decoded.reason
