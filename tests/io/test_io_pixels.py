"""The image contract (chextriev/io/pixels.py): the one shrink, model pixels that hand the model
the same input as the original, boxes through the scale, previews and thumbnails as JPEG."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from chextriev.io.pixels import (
    PREVIEW_SIDE,
    THUMBNAIL_SIDE,
    encode_preview,
    encode_thumbnail,
    image_mimetype,
    model_pixels,
    shrink,
)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    return np.clip(smooth + 0.1 * rng.standard_normal((height, width)), 0, 1).astype(np.float32)


def test_shrink_keeps_the_aspect_never_enlarges_and_passes_small_images_through():
    big = _image(300, 200)
    small = shrink(big, 150)
    assert small.shape == (150, 100) and small.dtype == np.float32
    assert 0.0 <= small.min() and small.max() <= 1.0
    assert abs(float(small.mean()) - float(big.mean())) < 0.01  # an average, not a sample
    assert shrink(big, 300) is not None and shrink(big, 300).shape == (300, 200)
    assert shrink(big, 1000).shape == (300, 200) and shrink(big, None).shape == (300, 200)
    assert shrink(_image(1000, 3), 10).shape == (10, 1)  # a side never rounds to 0
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        shrink(np.zeros((4, 4, 3)), 2)
    with pytest.raises(ValueError, match="max_side"):
        shrink(big, 0)


@pytest.mark.parametrize("shape", [(300, 257), (256, 256), (97, 200), (2048, 2048)])
def test_model_pixels_hand_a_roi_model_the_input_of_the_original(shape):
    """The pre-shrink to the model's square with the model's filter: the model's own resize is
    then the identity, and its input (image and boxes) equals what it makes of the original."""
    import torch

    from chextriev.anatomy.atlas import default_template
    from chextriev.model import TINY, build_model

    model = build_model("v6", **TINY)
    side = model.max_input_side
    assert side == TINY["image_size"]
    original = _image(*shape)
    boxes = default_template() * np.array([shape[1], shape[0]] * 2, np.float32)
    boxes[4] = np.nan
    prepared = model_pixels(original, side)
    assert prepared.pixels.shape == (side, side) and prepared.original_shape == shape
    assert prepared.scale == (side / shape[1], side / shape[0])
    expected_input, expected_boxes = model.prepare_input(original, boxes)
    given_input, given_boxes = model.prepare_input(prepared.pixels, prepared.to_model(boxes))
    torch.testing.assert_close(given_input, expected_input, atol=2e-5, rtol=0)
    torch.testing.assert_close(given_boxes, expected_boxes, atol=1e-4, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(prepared.to_original(prepared.to_model(boxes)), boxes, rtol=1e-6, equal_nan=True)


def test_model_pixels_leave_what_the_model_needs_whole():
    """Images no larger than the model's side, crop-mode and centre-crop models (max_input_side
    None): the pixels unchanged, boxes unchanged."""
    from chextriev.model import TINY, build_model

    small = _image(40, 64)
    same = model_pixels(small, 64)
    assert same.pixels.shape == (40, 64) and same.scale == (1.0, 1.0)
    assert build_model("v6", **dict(TINY, feature_mode="crop", crop_size=32)).max_input_side is None
    assert build_model("v6", **TINY, center_crop=0.8).max_input_side is None
    whole = model_pixels(_image(500, 300), None)
    assert whole.pixels.shape == (500, 300) and whole.scale == (1.0, 1.0)
    boxes = np.array([[1.0, 2.0, 30.0, 40.0], [np.nan] * 4], np.float32)
    np.testing.assert_array_equal(whole.to_model(boxes), boxes)
    with pytest.raises(ValueError, match="max_input_side"):
        model_pixels(_image(8, 8), 0)


def test_embeddings_of_model_pixels_equal_those_of_the_original():
    import torch

    from chextriev.checkpoint import LoadedModel
    from chextriev.embedding import embed_images
    from chextriev.model import TINY, build_model

    torch.manual_seed(0)
    loaded = LoadedModel.from_model(build_model("v6", **TINY))
    originals = [_image(512, 448, seed) for seed in range(3)]
    prepared = [model_pixels(image, loaded.max_input_side) for image in originals]
    direct = embed_images(loaded, originals)
    shrunk = embed_images(loaded, [p.pixels for p in prepared])
    cosine = np.sum(direct.embeddings * shrunk.embeddings, axis=1)
    assert float(cosine.min()) >= 0.99999
    mapped = np.stack([p.to_original(b) for p, b in zip(prepared, shrunk.boxes)])
    np.testing.assert_allclose(mapped, direct.boxes, rtol=1e-5, atol=1e-3, equal_nan=True)


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_previews_and_thumbnails_are_grey_jpegs_of_the_shrunk_image():
    image = _image(600, 400)
    preview = _decoded(encode_preview(image, 300))
    assert preview.format == "JPEG" and preview.mode == "L" and preview.size == (200, 300)
    assert encode_preview(image, 0) is None
    assert _decoded(encode_preview(image)).size == (400, 600)  # never enlarged (side 1024)
    from indexer.cli import PREVIEW_SIDE as CLI_DEFAULT  # the lazy CLI writes the number itself

    assert PREVIEW_SIDE == CLI_DEFAULT == 1024
    data = encode_thumbnail(image)
    thumbnail = _decoded(data)
    assert thumbnail.format == "JPEG" and thumbnail.mode == "L"
    assert max(thumbnail.size) == THUMBNAIL_SIDE == 128 and len(data) < 8000
    pixels = np.asarray(thumbnail, np.float32) / 255
    assert np.abs(pixels - shrink(image, 128)).mean() < 0.03  # the image, not another one
    assert image_mimetype(data) == "image/jpeg"
    png = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(png, format="PNG")
    assert image_mimetype(png.getvalue()) == "image/png"  # thumbnails of older catalogs
    with pytest.raises(ValueError, match="neither JPEG nor PNG"):
        image_mimetype(b"GIF89a..")


def test_the_image_contract_loads_without_torch():
    """The decoding workers import it: it must not pull torch in (their start-up)."""
    code = "import sys, chextriev.io.pixels; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-1000:]
