"""Writers of a tiny CheXpert release in exactly the published formats, for tests/io and
tests/metrics: ``CheXpert-v1.0/{train,valid}.csv`` (14 observations, blank and -1.0 cells), small
JPEGs under the release folder, and HAM's ``BBoxes.json`` with its name quirks."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from chextriev.vocab import CHEXPERT_OBSERVATIONS

HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
          "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
          "Pleural Effusion,Pleural Other,Fracture,Support Devices\n")
OBS = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}
SIZE = (120, 100)  # (H, W) of every test image


def _row(path: str, sex: str, age: int, fl: str, appa: str, **values: str) -> str:
    cells = [""] * 14
    for name, value in values.items():
        cells[OBS[name.replace("_", " ")]] = value
    return ",".join([f"CheXpert-v1.0/{path}", sex, str(age), fl, appa, *cells]) + "\n"


TRAIN_ROWS = [
    _row("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
         Cardiomegaly="1.0", Edema="-1.0", Pleural_Effusion="0.0", Support_Devices="1.0"),
    _row("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "",
         Cardiomegaly="1.0", Fracture="1.0"),
    _row("train/patient00002/study1/view1_frontal.jpg", "Male", 45, "Frontal", "PA", No_Finding="1.0"),
    _row("train/patient00003/study2/view1_frontal.jpg", "Male", 50, "Frontal", "AP", Edema="1.0"),  # no file
] + [
    _row(f"train/patient{n:05d}/study1/view1_frontal.jpg", "Unknown", 30 + n, "Frontal", "PA",
         Lung_Opacity="1.0" if n % 2 else "-1.0", Atelectasis="0.0")
    for n in range(4, 40)
]
VALID_ROWS = [
    _row("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP",
         **{o.replace(" ", "_"): "0.0" for o in CHEXPERT_OBSERVATIONS if o != "Cardiomegaly"}, Cardiomegaly="1.0"),
    _row("valid/patient64542/study1/view1_frontal.jpg", "Female", 70, "Frontal", "PA",
         **{o.replace(" ", "_"): "0.0" for o in CHEXPERT_OBSERVATIONS if o != "No Finding"}, No_Finding="1.0"),
]
BOXES = {
    "train/patient00001/study1/view1_frontal.jpg": {
        "Cardiomegaly": [[10, 40, 50, 90]],
        "edema": [[5, 5, 20, 30]],
        "Pleural_Effusion": [[60, 80, 95, 115], [2, 80, 30, 110]],
    },
    "train/patient00001/study1/view2_lateral.jpg": {"Fracture": [[10, 10, 20, 20]]},  # lateral: not read
    "train/patient00002/study1/view1_frontal.jpg": {"Nodule": [[10, 10, 30, 30]], "Edema": [[1, 1, 9, 9]]},
    "valid/patient64541/study1/view1_frontal.jpg": {
        "Enlarg_Cardiomediastinum": [[20, 20, 80, 60]],
        "Enlarged_Cardiomediastinum": [[25, 25, 75, 55]],
    },
    "valid/patient64542/study1/view1_frontal.jpg": {"Cardiomegaly": [[900, 700, 2500, 1600]]},  # original pixels
    "train/patient00004/study1/view1_frontal.jpg": {"Atelectasis": [[50, 50, 40, 60]]},  # xmax < xmin
    "train/patient99999/study1/view1_frontal.jpg": {"Pneumothorax": [[1, 2, 3, 4]]},  # not in the CSVs
    "train/patient01086/study3/view1_frontal.jpg": {},  # as in the real file: an image with no box
}


def _jpeg(path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(SIZE, value, np.uint8)
    pixels[40:90, 10:50] = 220  # where the Cardiomegaly box is
    Image.fromarray(pixels, "L").save(path, quality=95)


def write_release(root, *, boxes: bool = True, test_csv: bool = False):
    release = root / "CheXpert-v1.0"
    release.mkdir(parents=True)
    (release / "train.csv").write_text(HEADER + "".join(TRAIN_ROWS))
    (release / "valid.csv").write_text(HEADER + "".join(VALID_ROWS))
    for row in TRAIN_ROWS + VALID_ROWS:
        rel = row.split(",")[0]
        if "patient00003" not in rel:
            _jpeg(root / rel)
    if test_csv:
        (release / "test.csv").write_text(HEADER + _row("test/patient70001/study1/view1_frontal.jpg", "Male", 60,
                                                        "Frontal", "PA", Pneumothorax="1.0"))
        _jpeg(release / "test/patient70001/study1/view1_frontal.jpg")
    if boxes:
        (root / "BBoxes.json").write_text(json.dumps(BOXES))
    return release
