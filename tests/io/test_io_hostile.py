"""Hostile input to the readers: every file either decodes to a valid image or raises
ImageReadError (ImageTooLargeError for what announces more than the limits), and the guards
run before anything expands. The files are in tests/hostile_files.py."""

from __future__ import annotations

import io
import zlib

import hostile_files as hostile  # tests/hostile_files.py (tests/ is on sys.path)
import numpy as np
import pydicom
import pytest
from dicom_files import make_dicom, write_dicom
from PIL import Image
from pydicom.data import get_testdata_file

from chextriev.errors import ImageReadError, ImageTooLargeError
from chextriev.io import guards
from chextriev.io.dicom import dicom_metadata, pixel_geometry
from chextriev.io.images import checked_pixels, image_size, read_image

LIMIT = 64 * 1024 * 1024  # the server's MAX_PIXELS default


@pytest.mark.parametrize("case", sorted(hostile.HOSTILE))
def test_hostile_files_fail_alone_with_the_reason(case):
    make, expected = hostile.HOSTILE[case]
    with pytest.raises(ImageReadError) as caught:
        read_image(make(), max_pixels=LIMIT)
    assert isinstance(caught.value, ImageTooLargeError) is (expected == "413"), caught.value
    assert caught.value.reason and "<" in caught.value.source  # names the source (bytes)


def test_the_deflated_bomb_is_refused_from_its_announcement(monkeypatch):
    """16 frames of 4096 x 4096 in 510 kB: refused once the first MiB is inflated, not after 512 MiB."""
    produced = []
    real = guards.inflate_bounded

    def counting(data, limit, name, **kwargs):
        announce = kwargs["announce"]

        def spy(out):
            produced.append(len(out))
            return announce(out)

        return real(data, limit, name, **{**kwargs, "announce": spy})

    monkeypatch.setattr("chextriev.io.dicom.inflate_bounded", counting)
    data = hostile.deflated_multiframe()
    assert len(data) < 600_000
    with pytest.raises(ImageTooLargeError, match="16 frame"):
        read_image(data, max_pixels=LIMIT)
    assert max(produced) <= guards.INFLATE_STEP
    with pytest.raises(ImageTooLargeError):  # the header-only path is bounded the same way
        dicom_metadata(data, max_pixels=LIMIT)


def test_a_genuine_deflated_file_still_decodes():
    data = hostile.deflated_small()
    assert b"1.2.840.10008.1.2.1.99" in data[:1024]
    loaded = read_image(data)
    ds = hostile.image_dataset(64, 64)
    reference = read_image(hostile.dicom_bytes(ds)).pixels
    np.testing.assert_array_equal(loaded.pixels, reference)
    assert loaded.meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.1.99"
    bundled = get_testdata_file("image_dfl.dcm", download=False)
    assert read_image(bundled).pixels.shape == pydicom.dcmread(bundled).pixel_array.shape


def test_inflate_bounded_stops_at_the_bound_and_at_the_announcement():
    stream = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = stream.compress(bytes(100 << 20)) + stream.flush()
    with pytest.raises(ImageTooLargeError, match="the limit"):
        guards.inflate_bounded(bomb, 8 << 20, "bomb")
    with pytest.raises(ImageTooLargeError, match="announces"):
        guards.inflate_bounded(bomb, 8 << 20, "bomb", announce=lambda out: 9 << 20)
    with pytest.raises(ImageTooLargeError, match="what its header announces"):
        guards.inflate_bounded(bomb, 8 << 20, "bomb", announce=lambda out: 1000)
    small = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = bytes(range(256)) * 1000
    assert guards.inflate_bounded(small.compress(payload) + small.flush(), 1 << 20, "ok") == payload
    with pytest.raises(ImageReadError, match="corrupt"):
        guards.inflate_bounded(b"\xff" * 64, 1 << 20, "garbage")


def _frame(name: str) -> bytes:
    from pydicom.encaps import get_frame

    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    return get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames") or 1)), ds


@pytest.mark.parametrize("name, kind", [("MR_small_jp2klossless.dcm", "jpeg2000"),
                                        ("MR_small_jpeg_ls_lossless.dcm", "jpeg-ls"),
                                        ("SC_rgb_jpeg_gdcm.dcm", "jpeg"), ("JPEG-lossy.dcm", "jpeg")])
def test_codestream_headers_of_real_files_match_their_dicom(name, kind):
    frame, ds = _frame(name)
    header = guards.codestream_header(frame)
    assert header is not None and header.kind == kind
    assert (header.height, header.width, header.components) == (ds.Rows, ds.Columns,
                                                                ds.SamplesPerPixel)


def test_codestream_header_of_a_pillow_jpeg_and_of_garbage():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(buffer, "JPEG")
    header = guards.codestream_header(buffer.getvalue())
    assert (header.kind, header.height, header.width, header.components) == ("jpeg", 30, 50, 1)
    assert guards.codestream_header(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before a frame
    assert guards.codestream_header(b"not a codestream") is None
    assert guards.codestream_header(b"\xff\x4f\xff\x51\x00") is None  # SIZ cut short


def test_rle_segment_table():
    frame, ds = _frame("MR_small_RLE.dcm")
    assert guards.rle_segment_count(frame) == ds.BitsAllocated // 8
    assert guards.rle_segment_count(b"\x10" + bytes(63)) is None  # 16 segments
    assert guards.rle_segment_count(frame[:40]) is None


def test_only_the_first_frame_is_decoded():
    frames = np.stack([np.full((16, 16), 100 * (i + 1), np.uint16) for i in range(3)])
    frames[0, :8] = 50
    ds = hostile.image_dataset(16, 16, frames=3, pixels=frames)
    out = read_image(hostile.dicom_bytes(ds)).pixels
    assert out.shape == (16, 16)
    np.testing.assert_allclose(out, (frames[0] - 50) / 50.0)  # min-max of frame 0 alone


def test_pixel_geometry_reports_what_the_header_announces():
    ds = hostile.image_dataset(32, 48, frames=2, pixels=np.zeros((2, 32, 48)))
    geometry = pixel_geometry(ds, "x", guards.Limits.resolve(10_000))
    assert (geometry.rows, geometry.columns, geometry.frames, geometry.expected_bytes) == (
        32, 48, 2, 2 * 32 * 48 * 2)
    with pytest.raises(ImageTooLargeError, match="pixel data"):
        pixel_geometry(ds, "x", guards.Limits(10_000, 1000))
    with pytest.raises(ImageTooLargeError):
        pixel_geometry(ds, "x", guards.Limits(1000, 10**9))


def test_png_bombs_are_bounded():
    out = read_image(hostile.png_idat_bomb(100)).pixels  # inflates into the 64 x 64 buffer only
    assert out.shape == (64, 64)
    with pytest.raises(ImageReadError, match="MAX_TEXT_CHUNK"):
        read_image(hostile.png_text_bomb(chunks=2))


def test_truncated_and_garbled_rasters_are_errors(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(buffer, "PNG")
    data = buffer.getvalue()
    for bad in (data[: len(data) // 2], data[:40] + b"\0" * 30 + data[70:]):
        with pytest.raises(ImageReadError):
            read_image(bad)
    with pytest.raises(ImageReadError, match="header"):
        image_size(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)


def test_the_output_contract():
    np.testing.assert_array_equal(checked_pixels(np.array([[2.0, -1.0]]), "x"), [[1.0, 0.0]])
    assert checked_pixels(np.ones((2, 2), np.float64), "x").dtype == np.float32
    for bad in (np.array([[np.nan, 0.0]]), np.zeros((2, 2, 2)), np.zeros((0, 3))):
        with pytest.raises(ImageReadError):
            checked_pixels(bad, "x")


def test_burned_in_annotation_is_read(tmp_path):
    assert dicom_metadata(hostile.burned_in())["BurnedInAnnotation"] == "YES"
    path = write_dicom(tmp_path / "plain.dcm", make_dicom(np.zeros((8, 8), np.uint16)))
    assert "BurnedInAnnotation" not in dicom_metadata(path)


def test_max_pixels_environment(monkeypatch):
    monkeypatch.setenv("CHEXTRIEV_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError):
        read_image(hostile.dicom_bytes(hostile.image_dataset(16, 16)))
    monkeypatch.setenv("CHEXTRIEV_MAX_PIXELS", "-5")
    with pytest.raises(ImageReadError, match="positive"):
        read_image(hostile.dicom_bytes(hostile.image_dataset(16, 16)))
