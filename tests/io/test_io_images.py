"""PNG / JPEG loading: modes, format detection by content, bad input, the bomb guard."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chextriev.errors import ImageReadError
from chextriev.io.images import detect_format, image_size, load_image, read_image


def _gradient(h: int = 16, w: int = 24) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).round().astype(np.uint8)


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_png_l_exact(tmp_path):
    arr = _gradient()
    path = tmp_path / "a.png"
    Image.fromarray(arr, mode="L").save(path)
    out = load_image(path)
    assert out.dtype == np.float32 and out.shape == (16, 24)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)


def test_png_16bit(tmp_path):
    arr = (np.arange(64 * 32).reshape(32, 64) * 31).astype(np.uint16)
    path = tmp_path / "b.png"
    Image.fromarray(arr).save(path)
    loaded = read_image(path)
    assert loaded.meta["mode"].startswith("I")
    np.testing.assert_allclose(loaded.pixels, arr / 65535.0, atol=1e-6)


def test_png_rgb_rgba_la_give_luminance(tmp_path):
    grey = _gradient()
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    out_rgb = load_image(_png_bytes(Image.fromarray(rgb, "RGB")))
    np.testing.assert_allclose(out_rgb, expected, atol=1e-5)
    rgba = np.concatenate([rgb, np.zeros_like(grey)[..., None]], axis=-1)  # alpha 0 is ignored
    np.testing.assert_allclose(
        load_image(_png_bytes(Image.fromarray(rgba, "RGBA"))), expected, atol=1e-5
    )
    la = Image.fromarray(grey, "L").convert("LA")
    np.testing.assert_allclose(load_image(_png_bytes(la)), grey / 255.0, atol=1e-7)


def test_jpeg_and_detection_by_content(tmp_path):
    arr = _gradient(32, 32)
    path = tmp_path / "misnamed.png"  # a JPEG under a .png name
    Image.fromarray(arr, "L").save(path, format="JPEG", quality=95)
    assert detect_format(path) == "jpeg"
    loaded = read_image(path)
    assert loaded.format == "jpeg"
    assert np.abs(loaded.pixels - arr / 255.0).max() < 0.05
    assert image_size(path) == (32, 32)


def test_truncated_png(tmp_path):
    data = _png_bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    )
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert err.value.source == str(path) and "truncated" in err.value.reason


def test_text_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a PNG, JPEG or DICOM"):
        load_image(path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_bomb_guard(monkeypatch):
    data = _png_bytes(Image.new("L", (100, 100)))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(data, max_pixels=5000)
    monkeypatch.setenv("CHEXTRIEV_MAX_PIXELS", "9999")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        load_image(data)
    assert load_image(data, max_pixels=10_000).shape == (100, 100)
