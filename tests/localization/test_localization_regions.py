import io

import numpy as np
import pytest
from PIL import Image

from chextriev.localization.overlay import overlay_png, overlay_rgb
from chextriev.localization.regions import heatmap_mask, heatmap_to_boxes


def test_two_blobs_give_two_boxes_hottest_first():
    heat = np.zeros((40, 60), np.float32)
    heat[5:10, 3:8] = 0.6  # rows 5-9, cols 3-7
    heat[20:31, 40:50] = 1.0
    heat[0, 59] = 0.4  # below 0.5 * max: not a component
    boxes = heatmap_to_boxes(heat, threshold=0.5)
    assert boxes == [(40.0, 20.0, 50.0, 31.0), (3.0, 5.0, 8.0, 10.0)]
    assert heatmap_to_boxes(heat, threshold=0.7) == [(40.0, 20.0, 50.0, 31.0)]
    assert len(heatmap_to_boxes(heat, threshold=0.3)) == 2  # the 1-pixel one is under the default min_area
    assert len(heatmap_to_boxes(heat, threshold=0.3, min_area=1)) == 3


def test_diagonal_pixels_are_one_component_and_min_area():
    heat = np.zeros((10, 10), np.float32)
    heat[2, 2] = heat[3, 3] = heat[4, 4] = 1.0
    heat[8, 8] = 0.9
    boxes = heatmap_to_boxes(heat, threshold=0.5, min_area=2)
    assert boxes == [(2.0, 2.0, 5.0, 5.0)]  # the single-pixel blob is dropped
    assert len(heatmap_to_boxes(heat, threshold=0.5, min_area=1)) == 2


def test_empty_and_flat_maps():
    assert heatmap_to_boxes(np.zeros((8, 8))) == []
    assert not heatmap_mask(np.zeros((8, 8))).any()
    assert heatmap_to_boxes(np.full((8, 8), 0.3)) == [(0.0, 0.0, 8.0, 8.0)]
    with pytest.raises(ValueError):
        heatmap_mask(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        heatmap_mask(np.zeros((2, 2)), threshold=1.5)


def test_mask_is_relative_to_maximum():
    heat = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    assert heatmap_mask(heat, 0.5).tolist() == [[False, True], [True, True]]


def test_overlay_png_round_trip():
    image = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20)
    heat = np.zeros((15, 10), np.float32)  # another size: resized to the image
    heat[0:5, 0:5] = 1.0
    rgb = overlay_rgb(image, heat)
    assert rgb.shape == (30, 20, 3) and rgb.dtype == np.uint8
    cold = rgb[-1, -1]
    assert abs(int(cold[0]) - int(cold[2])) <= 1  # unheated pixel stays grey
    hot = rgb[1, 1]
    assert int(hot.max()) - int(hot.min()) > 20  # heated pixel is coloured
    decoded = np.asarray(Image.open(io.BytesIO(overlay_png(image, heat))))
    assert np.array_equal(decoded, rgb)
