"""Zero-shot evaluation (``metrics/zero_shot.py``, ``chextriev evaluate`` on a model with a text
tower): the figures of tiny hand-made vectors against a computation written out by hand; the
prompts file (the shipped one covers every class list; bad files refused with the reason);
``chextriev evaluate`` of a no-label checkpoint of the tiny CLIP on real NIH images against
open_clip's own image and text embeddings, scored by a loop written here; the notes saying why a
model without a finding head has no classification and localization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chextriev.errors import DataFormatError
from chextriev.vocab import CLASS_LISTS
from metrics.zero_shot import PROMPTS_FILE, load_prompts, zero_shot_arrays, zero_shot_scores

# Five images and three prompts in 2-d (unit vectors: cosine = inner product).
IMAGES = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)
POSITIVE = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)  # A, B, C
NEGATIVE = np.array([[np.nan, np.nan], [1, 0], [np.nan, np.nan]], np.float32)  # only B has one
LABELS = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float32)  # C: no image


def test_zero_shot_figures_equal_a_hand_computation():
    report = zero_shot_arrays(IMAGES, LABELS, ["A", "B", "C"], POSITIVE, NEGATIVE, ks=(1, 3))
    # A's prompt ranks the images 0, 1, 2, 3, 4 (cosines 1, .8, .6, 0, -1); A is in images 2 and 4:
    # top 1 has no hit; top 3 has one hit, at rank 3: AP@3 = (1/3) / 1, HR@3 = 1/3, RR@3 = 1/3.
    # B's prompt ranks 3, 2, 1 first (cosines 1, .8, .6); B is in images 1 and 3: hit at 1 and 3:
    # AP@3 = (1/1 + 2/3) / 2, HR@3 = 2/3, RR = 1; top 1: all 1.
    a1, b1 = (report["retrieval"][1]["per_class"][name] for name in ("A", "B"))
    a3, b3 = (report["retrieval"][3]["per_class"][name] for name in ("A", "B"))
    assert (a1["mAP"], a1["mHR"], a1["mRR"]) == (0.0, 0.0, 0.0)
    assert (b1["mAP"], b1["mHR"], b1["mRR"]) == (1.0, 1.0, 1.0)
    assert a3["mAP"] == pytest.approx(1 / 3) and a3["mHR"] == pytest.approx(1 / 3) and a3["mRR"] == pytest.approx(1 / 3)
    assert b3["mAP"] == pytest.approx((1 + 2 / 3) / 2) and b3["mHR"] == pytest.approx(2 / 3) and b3["mRR"] == 1.0
    assert a3["n_queries"] == b3["n_queries"] == 1  # one prompt, one query
    # C: no image has it, so its prompt cannot be scored: undefined, out of the average
    assert report["retrieval"][3]["per_class"]["C"]["mAP"] is None
    assert report["retrieval"][3]["undefined_classes"] == ["C"]
    assert report["retrieval"][3]["class_average"]["mAP"] == pytest.approx((1 / 3 + (1 + 2 / 3) / 2) / 2)
    # classification: A scores = cosines to A = [1, .8, .6, 0, -1], positives .6 and -1 beat one of
    # the three negatives (0) between them: AUROC 1/6. B scores = cos B - cos(B's negative) =
    # [-1, -.2, .2, 1, 1], positives -.2 and 1 against -1, .2, 1: 1 + 0 + 0 + 1 + 1 + tie 1/2 = 3.5/6.
    auroc = report["classification"]["auroc"]
    assert auroc["per_class"]["A"] == pytest.approx(1 / 6)
    assert auroc["per_class"]["B"] == pytest.approx(3.5 / 6)
    assert auroc["per_class"]["C"] is None and auroc["mean"] == pytest.approx((1 / 6 + 3.5 / 6) / 2)
    np.testing.assert_allclose(zero_shot_scores(IMAGES, POSITIVE, NEGATIVE)[:, 1], [-1, -0.2, 0.2, 1, 1], atol=1e-6)
    assert report["classification"]["f1"] is None  # no validation images: no threshold chosen on test


def test_thresholds_come_from_the_validation_images_and_the_abnormality_summary():
    report = zero_shot_arrays(IMAGES, LABELS[:, :1], ["abnormal"], POSITIVE[:1], ks=(3,),
                              val_images=IMAGES[::-1], val_labels=LABELS[::-1, :1])
    summary = report["abnormality"]
    assert summary["auroc"] == pytest.approx(1 / 6) and summary["n_abnormal"] == 2 and summary["n_normal"] == 3
    assert summary["threshold_rule"] == "max F1 on this evaluation's validation split"
    assert summary["threshold"] is not None and report["classification"]["f1"]["chosen_on"] == "validation (max F1)"


def test_the_shipped_prompts_cover_every_class_list():
    prompts = load_prompts()
    assert prompts.source == str(PROMPTS_FILE)
    for name, findings in CLASS_LISTS.items():
        missing = [finding for finding in findings if prompts.lookup(finding) is None]
        assert not missing, (name, missing)
    assert prompts.lookup("Effusion") == ("pleural effusion", "no pleural effusion", "effusion")
    assert prompts.lookup("Pleural_Effusion")[2] == "pleural effusion"
    assert prompts.lookup("No Finding")[1] is None


@pytest.mark.parametrize(("text", "words"), [
    (None, "does not exist"),
    ("[prompts\n", "not valid TOML"),
    ("[prompts]\natelectasis = 'atelectasis'\n[extra]\nx = 'y'\n", "unknown table(s) extra"),
    ("[prompts]\natelectasis = ''\n", "'atelectasis' must be a non-empty text"),
    ("[prompts]\natelectasis = 3\n", "must be a non-empty text"),
    ("[prompts]\nEffusion = 'a'\neffusion = 'b'\n", "names the finding 'effusion' twice"),
    ("[prompts]\natelectasis = 'atelectasis'\n[negatives]\nedema = 'no edema'\n", "negatives without a prompt: edema"),
    ("[negatives]\n", "has no [prompts] entry"),
])
def test_bad_prompt_files_are_refused_with_the_reason(tmp_path, text, words):
    path = tmp_path / "prompts.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataFormatError, match="prompts file") as error:
        load_prompts(path)
    assert words in str(error.value) and str(path) in str(error.value)


@pytest.fixture(scope="module")
def clip_checkpoint(nih_sample, tmp_path_factory):
    """A no-label checkpoint of the tiny BiomedCLIP-layout CLIP (``chextriev model init``) and the
    open_clip reference folder of the same weights."""
    import encoder_files
    from server_helpers import run_subcommand

    from chextriev.model import cli as model_cli

    root = tmp_path_factory.mktemp("zero-shot")
    hub, reference = encoder_files.write_open_clip(root / "biomedclip")
    checkpoint = root / "model.ckpt"
    assert run_subcommand(model_cli, ["model", "init", "--backbone", "biomedclip", "--backbone-weights", str(hub),
                                      "--data", str(nih_sample), "--out-file", str(checkpoint), "--sample", "4",
                                      "--no-progress"]) == 0
    return {"checkpoint": checkpoint, "reference": reference, "hub": hub}


PROMPTS = """[prompts]
Atelectasis = "atelectasis at the lung base"
Infiltration = "pulmonary infiltrate"
Effusion = "pleural effusion"
[negatives]
Effusion = "no pleural effusion"
"""


def _ap(relevant: list[bool]) -> float:
    hits, total = 0, 0.0
    for rank, hit in enumerate(relevant, start=1):
        if hit:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def test_chextriev_evaluate_reports_zero_shot_figures_of_the_models_own_towers(
        clip_checkpoint, nih_sample, tmp_path, capsys):
    """30 real NIH images, three findings from a prompts file given with --prompts: the figures
    equal those of open_clip's own image and text embeddings, ranked and scored here."""
    import open_clip
    from server_helpers import run_subcommand

    from chextriev.io.datasets import load_records
    from metrics import cli as metrics_cli
    from metrics.classification import auroc

    prompts = tmp_path / "prompts.toml"
    prompts.write_text(PROMPTS)
    out = tmp_path / "eval"
    assert run_subcommand(metrics_cli, ["evaluate", "--checkpoint", str(clip_checkpoint["checkpoint"]), "--data",
                                        str(nih_sample), "--class-list", "nih", "--split", "all", "--max-images",
                                        "30", "--k", "5", "10", "--out", str(out), "--no-figures", "--precision",
                                        "fp32", "--prompts", str(prompts), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((out / "metrics.json").read_text())
    zero = report["zero_shot"]
    assert list(zero["prompts"]) == ["Atelectasis", "Effusion", "Infiltration"]  # the class list's order
    assert zero["prompts"]["Effusion"] == {"prompt": "pleural effusion", "negative": "no pleural effusion",
                                           "key": "effusion"}
    assert "Cardiomegaly" in zero["no_prompt"] and len(zero["no_prompt"]) == 11
    assert summary["zero_shot"]["n_findings"] == 3 and summary["zero_shot"]["prompts_file"] == str(prompts)
    assert any("no finding head" in note for note in summary["notes"])
    assert report["classification"] is None and report.get("localization") is None

    # the reference: open_clip's own towers, built by open_clip
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_checkpoint['reference']}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_checkpoint['hub']}")
    records = {r.image_id: r for r in load_records(nih_sample, class_list="nih")}
    chosen = [records[image_id] for image_id in report["image_ids"]]
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.open(r.source).convert("RGB")) for r in chosen]),
                                    normalize=True).numpy()
        texts = model.encode_text(tokenizer(["atelectasis at the lung base", "pulmonary infiltrate",
                                             "pleural effusion", "no pleural effusion"]), normalize=True).numpy()
    cosines = images @ texts.T  # (30, 4)
    names = list(CLASS_LISTS["nih"])
    compared = 0
    for column, name in enumerate(["Atelectasis", "Infiltration", "Effusion"]):  # the texts' order above
        labels = np.array([r.labels[names.index(name)] for r in chosen])
        score = cosines[:, column] - (cosines[:, 3] if name == "Effusion" else 0)
        expected_auroc = auroc(labels, score) if 0 < labels.sum() < len(labels) else None
        got = zero["classification"]["auroc"]["per_class"][name]
        assert got == pytest.approx(expected_auroc, abs=1e-6) if expected_auroc is not None else got is None
        order = np.argsort(-cosines[:, column], kind="stable")
        for k in (5, 10):
            entry = zero["retrieval"][str(k)]["per_class"][name]
            if labels.sum() == 0:
                assert entry["mAP"] is None
                continue
            relevant = [bool(labels[i]) for i in order[:k]]
            assert entry["mAP"] == pytest.approx(_ap(relevant), abs=1e-9)
            assert entry["mHR"] == pytest.approx(sum(relevant) / k)
            compared += 1
    defined = [zero["classification"]["auroc"]["per_class"][n] for n in zero["prompts"]]
    assert compared >= 4 and sum(v is not None for v in defined) >= 2  # the 30 images hold these findings
    assert summary["zero_shot"]["auroc"] == pytest.approx(np.mean([v for v in defined if v is not None]))
    markdown = (out / "report.md").read_text()
    assert "## Zero-shot per finding" in markdown and "| Effusion | pleural effusion | no pleural effusion |" in markdown


def test_zero_shot_is_asked_of_a_model_without_a_text_tower(tiny_checkpoint, tiny_folder, tmp_path):
    """--zero-shot on a V1 checkpoint is an error that says why; by default nothing is said."""
    from server_helpers import run_subcommand

    from metrics import cli as metrics_cli

    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--split", "all",
            "--out", str(tmp_path / "eval"), "--no-figures", "--no-localization"]
    with pytest.raises(DataFormatError, match="--zero-shot: this model .* has no text encoder"):
        run_subcommand(metrics_cli, [*argv, "--zero-shot"])
    assert run_subcommand(metrics_cli, argv) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "zero_shot" not in report and "notes" not in report
