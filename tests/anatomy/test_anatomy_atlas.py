import numpy as np
import pytest

from chextriev.anatomy.atlas import Atlas, default_template
from chextriev.errors import DataFormatError
from chextriev.records import Record
from chextriev.vocab import NUM_REGIONS, REGIONS, region_index


def _record(i, boxes, size):
    return Record(source=f"img{i}.png", image_id=str(i), boxes=boxes, image_size=size)


def test_default_template_is_anatomical():
    boxes = default_template()
    assert boxes.shape == (NUM_REGIONS, 4)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all((boxes >= 0) & (boxes <= 1))
    # patient's right lung is on the image's left; the heart sits low and central
    assert boxes[region_index("right lung"), 2] <= boxes[region_index("left lung"), 0] + 0.05
    heart = boxes[region_index("cardiac silhouette")]
    assert heart[1] > 0.3 and heart[0] < 0.5 < heart[2]


def test_fit_uses_median_per_region_and_normalises_by_size():
    rng = np.random.default_rng(0)
    truth = default_template().copy()
    truth[0] = (0.1, 0.2, 0.4, 0.9)
    records = []
    for i, (h, w) in enumerate([(100, 200), (300, 300), (64, 128), (512, 256), (90, 90)]):
        norm = truth + rng.normal(0, 0.005, truth.shape).astype(np.float32)
        boxes = norm * np.array([w, h, w, h], dtype=np.float32)
        boxes[region_index("trachea")] = np.nan  # never seen
        records.append(_record(i, boxes, (h, w)))
    # one outlier for region 0 must not move the median much
    outlier = records[0].boxes.copy()
    outlier[0] = (0, 0, 200, 100)
    records.append(_record(99, outlier, (100, 200)))
    records.append(Record(source="nobox.png", image_id="nobox"))  # skipped
    atlas = Atlas.fit(records)
    assert np.allclose(atlas.boxes[0], truth[0], atol=0.02)
    t = region_index("trachea")
    assert atlas.counts[t] == 0
    assert np.allclose(atlas.boxes[t], default_template()[t])
    assert atlas.counts[0] == 6
    pixels = atlas.boxes_for(200, 100)
    assert pixels.dtype == np.float32 and pixels.shape == (18, 4)
    assert np.allclose(pixels[0], atlas.boxes[0] * [100, 200, 100, 200])


def test_fit_without_boxes_gives_default():
    atlas = Atlas.fit([Record(source="a.png", image_id="a")])
    assert np.allclose(atlas.boxes, Atlas.default().boxes)


def test_round_trip_and_format_errors():
    boxes = default_template() * 0.9 + 0.01
    atlas = Atlas(boxes, np.arange(NUM_REGIONS))
    again = Atlas.from_dict(atlas.to_dict())
    assert np.array_equal(again.boxes, atlas.boxes) and np.array_equal(again.counts, atlas.counts)
    bad = atlas.to_dict()
    bad["regions"] = list(reversed(REGIONS))
    with pytest.raises(DataFormatError):
        Atlas.from_dict(bad)
    with pytest.raises(DataFormatError):
        Atlas.from_dict({"counts": []})
    with pytest.raises(DataFormatError):
        Atlas(np.full((18, 4), np.nan))
