"""benchmarks/compare_localization.py: the tables over seeds (threshold keys as floats or as the
strings results.json gives back), and a tiny run end to end with its reuse rules (finished
seeds reused, NIH TIoU/TIoR added to seeds stored without them, a checkpoint without its
finished-training stamp trained again)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


@pytest.fixture(scope="module")
def script():
    from benchmarks import compare_localization

    return compare_localization


def _scores(value: float, as_text: bool) -> dict:
    return {(str(t) if as_text else t): value for t in (0.1, 0.3, 0.5, 0.7)}


def _results(script, per_seed: dict[str, tuple[float, bool]]) -> dict:
    seeds = {}
    for seed, (value, as_text) in per_seed.items():
        rows = {}
        for name, *_ in script.ROWS:
            synthetic = {"n_cases": 10, "iou": _scores(value, as_text), "iobb": _scores(value + 0.1, as_text),
                         "TIoU": _scores(value / 2, as_text), "TIoR": _scores(value / 4, as_text)}
            nih = {"n_cases": 8, "iou": _scores(value, as_text), "iobb": _scores(value, as_text),
                   "TIoU": _scores(value / 2, as_text), "TIoR": _scores(value / 2, as_text),
                   "unmapped_findings": ["Mass", "Nodule"]}
            rows[name] = {"synthetic": synthetic, "nih": nih}
        seeds[seed] = {"rows": rows, "auroc": {"resnet50": value, "ham": value + 0.2},
                       "train_seconds": {"resnet50": 10.0, "ham": None}}
    return {"seeds": seeds}


def test_tables_are_mean_and_sd_over_seeds_with_keys_from_json(script):
    results = _results(script, {"0": (0.2, False), "1": (0.4, True)})  # seed 1 as read back from JSON
    text = script.tables(results, [0, 1])
    ham = next(line for line in text.splitlines() if line.startswith("| HAM + boxes |"))
    assert ham.split(" | ")[1] == "0.300 ± 0.100"  # IoU T=0.1: mean and sd of 0.2 and 0.4
    assert "NIH sample, 12 real boxed images (8 scored" in text and "Mass, Nodule" in text
    assert "TIoU / TIoR against the boxes filled in as masks" in text
    assert "| ham | 0.500 ± 0.100 | n/a |" in text  # no training time recorded: n/a, not 0
    one = script.tables(results, [0])
    assert "| HAM + boxes | 0.200 |" in one  # one seed: no sd


def _tiny_nih(root: Path, size: int = 64) -> Path:
    """Three NIH images (two with boxes, in the release's 1024-pixel frame) and the CSVs."""
    (root / "images").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    rows, boxes = [], []
    for n, (finding, cx, cy) in enumerate((("Cardiomegaly", 20, 40), ("Atelectasis", 44, 24), ("No Finding", 0, 0))):
        pixels = 0.3 + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 50.0) * (finding != "No Finding")
        name = f"0000000{n}_000.png"
        Image.fromarray((pixels * 255).astype(np.uint8)).save(root / "images" / name)
        rows.append(f"{name},{finding},0,{n},50,M,PA,1024,1024,0.143,0.143\n")
        if finding != "No Finding":
            scale = 1024 / size
            boxes.append(f"{name},{finding},{(cx - 8) * scale},{(cy - 8) * scale},{16 * scale},{16 * scale}\n")
    (root / "Data_Entry_2017_v2020.csv").write_text(NIH_HEADER + "".join(rows))
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "".join(boxes))
    return root


@pytest.mark.slow  # four tiny models, one epoch each, scored on 4 synthetic and 2 NIH images
def test_tiny_run_reuse_nih_pixels_and_killed_training(script, tmp_path, caplog):
    from chextriev.io.datasets import load_records
    from chextriev.synth.writer import SynthConfig, write_archive

    archive = tmp_path / "archive"
    write_archive(SynthConfig(out=archive, patients=30, seed=1, size=64, dicom_share=0.0), progress=False)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--data", str(archive), "--out", str(out), "--work", str(work), "--nih", str(_tiny_nih(tmp_path / "nih")),
            "--seeds", "0", "--preset", "tiny", "--epochs", "1", "--max-images", "4", "--no-progress"]
    assert script.main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    rows = copy.deepcopy(saved["seeds"]["0"]["rows"])
    assert list(rows) == [name for name, *_ in script.ROWS]
    for row in rows.values():
        assert row["synthetic"]["n_cases"] >= 1 and "TIoU" in row["synthetic"]  # drawn lesion masks
        assert row["nih"]["n_cases"] == 2 and set(row["nih"]["TIoU"]) == {"0.1", "0.2", "0.3", "0.4", "0.5",
                                                                          "0.6", "0.7"}
    assert set(saved["seeds"]["0"]["train_seconds"]) == {"resnet50", "resnet50-pcam", "v6", "ham", "ham+boxes"}
    text = (out / "results.md").read_text()
    assert "| HAM + boxes |" in text and "boxes filled in as masks" in text
    assert "| PCAM (resnet50 classifier, pcam pooling) |" in text

    # a seed stored before a row existed (PCAM): that row alone is scored and added, the rest is kept
    pcam = "PCAM (resnet50 classifier, pcam pooling)"
    del saved["seeds"]["0"]["rows"][pcam], saved["seeds"]["0"]["auroc"]["resnet50-pcam"]
    (out / "results.json").write_text(json.dumps(saved))
    caplog.set_level(logging.INFO)
    assert script.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    def figures(by_row):  # everything but the wall time of the scoring
        return {name: {k: v for k, v in row.items() if k != "seconds"} for name, row in by_row.items()}

    assert figures(again["seeds"]["0"]["rows"]) == figures(rows)
    assert "resnet50-pcam" in again["seeds"]["0"]["auroc"]
    assert again["setup"]["added"][0]["rows"] == [pcam] and again["setup"]["added"][0]["seeds"] == [0]
    assert "Rows added later (PCAM (resnet50 classifier, pcam pooling); seeds 0" in (out / "results.md").read_text()
    assert any(r.getMessage() == f"seed 0: scoring the rows it lacks: {pcam}" for r in caplog.records)
    saved = again
    caplog.clear()

    # a seed stored before the NIH boxes had TIoU/TIoR: only those are added, the rest is kept
    for row in saved["seeds"]["0"]["rows"].values():
        del row["nih"]["TIoU"], row["nih"]["TIoR"]
    (out / "results.json").write_text(json.dumps(saved))
    caplog.set_level(logging.INFO)
    assert script.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert not [r for r in caplog.records if "training" in r.getMessage() and "seed 0:" in r.getMessage()]
    for name, row in again["seeds"]["0"]["rows"].items():
        assert row["nih"]["TIoU"] == rows[name]["nih"]["TIoU"] and row["synthetic"] == rows[name]["synthetic"]

    # a checkpoint left by a killed run (no train_seconds.txt) is trained again; the others are reused
    (work / "seed0" / "ham" / "train_seconds.txt").unlink()
    caplog.clear()
    records = load_records(archive)
    paths, seconds = script.train_models(records, work, 0, 0.2, {}, False, archive, "tiny", 1)
    assert paths["ham"] == work / "seed0" / "ham" / "best.pt"
    trained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("seed 0: training")]
    assert trained == ["seed 0: training ham"]
    assert any("no finished training" in r.getMessage() for r in caplog.records)
    assert (work / "seed0" / "ham" / "train_seconds.txt").is_file() and seconds["ham"] is not None
