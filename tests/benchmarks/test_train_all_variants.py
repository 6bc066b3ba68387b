"""benchmarks/train_all_variants.py: per-seed rows -> means and paired margins; a tiny run end to end."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def script():
    from benchmarks import train_all_variants

    return train_all_variants


def _row(map10: float, auroc: float | None = 0.5) -> dict:
    row = {f"{m}@{k}": map10 for k in (3, 5, 10) for m in ("mAP", "mHR", "mRR")}
    row["AUROC"] = auroc
    return row


def test_train_all_variants_summary_is_mean_and_paired_margin(script):
    per_seed = {"0": {"untrained": _row(0.30), "v6": _row(0.50, 0.8)},
                "1": {"untrained": _row(0.34), "v6": _row(0.44, 0.6)},
                "2": {"untrained": _row(0.32), "v6": _row(0.47, None)}}
    summary = script.summarise(per_seed)
    assert summary["v6"]["seeds"] == 3
    assert summary["v6"]["mAP@10"] == pytest.approx((0.50 + 0.44 + 0.47) / 3)
    assert summary["v6"]["AUROC"] == pytest.approx(0.7)  # seeds without an AUROC are left out
    margins = [0.20, 0.10, 0.15]  # each seed against its own untrained row
    assert summary["v6"]["margin"]["mean"] == pytest.approx(0.15)
    assert summary["v6"]["margin"]["sd"] == pytest.approx(0.05)  # sample sd of .20, .10, .15
    assert summary["v6"]["margin"]["min"] == pytest.approx(min(margins))
    assert "margin" not in summary["untrained"]
    table = script.markdown(summary, {"test_images": 9, "preset": "tiny", "data": "x", "seeds": [0, 1, 2]})
    assert "| v6 | 0.470/0.470/0.470 |" in table and "+0.150 ± 0.050 (+0.100)" in table


def test_train_all_variants_scores_ath_binary_on_the_ath_run(script):
    assert script.trained_as("ath-binary", ["v6", "ath", "ath-binary"]) == "ath"
    assert script.trained_as("ath-binary", ["v6", "ath-binary"]) is None  # no ath run: trained itself
    assert script.trained_as("ath", ["ath"]) is None and script.trained_as("untrained", []) is None
    from chextriev.model.config import VARIANTS

    assert list(script.ORDER) == ["untrained", *VARIANTS]
    summary = script.summarise({"0": {"untrained": _row(0.3), "ath-binary": {**_row(0.4), "trained_as": "ath"}}})
    table = script.markdown(summary, {"test_images": 9, "preset": "tiny", "data": "x", "seeds": [0],
                                      "command": "python -m benchmarks train_all_variants --seeds 0"})
    assert "| = ath |" in table and table.startswith("```bash\npython -m benchmarks train_all_variants --seeds 0")


def test_train_all_variants_rejects_bad_seeds(script):
    with pytest.raises(Exception, match="distinct"):
        script._seeds("1,1")
    with pytest.raises(Exception, match="integers"):
        script._seeds("a,b")


@pytest.mark.slow
def test_train_all_variants_tiny_run_and_resume(script, tmp_path, caplog):
    from chextriev.synth.writer import SynthConfig, write_archive

    archive = tmp_path / "archive"
    write_archive(SynthConfig(out=archive, patients=60, seed=1, size=64, dicom_share=0.0), progress=False)
    out = tmp_path / "all"
    argv = ["--data", str(archive), "--out", str(out), "--preset", "tiny", "--variants", "v0-image,ath,ath-binary",
            "--seeds", "0,1", "--max-epochs", "1", "--threads", "1"]
    assert script.main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["per_seed"]) == {"0", "1"}
    assert set(saved["per_seed"]["0"]) == {"untrained", "v0-image", "ath", "ath-binary"}
    assert (out / "seed0" / "v0-image" / "best.ckpt").is_file() and (out / "seed1" / "v0-image" / "best.ckpt").is_file()
    assert saved["per_seed"]["0"]["v0-image"]["region_AUROC"] is not None
    assert saved["per_seed"]["0"]["ath"]["region_AUROC"] is None  # a global model has no regions
    assert saved["per_seed"]["0"]["ath-binary"]["trained_as"] == "ath"
    from chextriev.checkpoint import load_checkpoint

    derived = load_checkpoint(out / "seed0" / "ath-binary" / "best.ckpt")
    assert derived.binary and derived.variant == "ath-binary" and not load_checkpoint(out / "seed0" / "ath" / "best.ckpt").binary
    text = (out / "results.md").read_text()
    assert "v0-image" in text and "region AUROC" in text and "python -m benchmarks train_all_variants --data" in text
    caplog.set_level("INFO")
    assert script.main(argv) == 0  # everything reused: nothing retrained
    assert sum("reusing the row" in r.getMessage() for r in caplog.records) == 8
    assert json.loads((out / "results.json").read_text())["per_seed"] == saved["per_seed"]


def test_train_all_variants_rows_with_config_overrides(script):
    """``NAME:FIELD=VALUE`` rows (the global classifier's pooling family) are parsed, typed and
    checked before any training, and listed after their variant."""
    assert script.parse_row("resnet50") == ("resnet50", {})
    assert script.parse_row("resnet50:pooling=pcam:attention=channel") == (
        "resnet50", {"pooling": "pcam", "attention": "channel"})
    assert script.parse_row("resnet50:pooling=lse:lse_gamma=5") == ("resnet50", {"pooling": "lse", "lse_gamma": 5.0})
    assert script.parse_row("v6:abs_pos=false") == ("v6", {"abs_pos": False})
    assert script.run_folder("resnet50:pooling=max") == "resnet50+pooling=max"
    with pytest.raises(ValueError, match="unknown variant 'resnet5'"):
        script.parse_row("resnet5:pooling=max")
    with pytest.raises(ValueError, match="'pool=max' is not FIELD=VALUE with a model config field"):
        script.parse_row("resnet50:pool=max")
    with pytest.raises(ValueError, match="belong to the global classifier"):
        script.parse_row("v6:pooling=max")
    summary = script.summarise({"0": {"untrained": _row(0.3), "resnet50:pooling=pcam": _row(0.4),
                                      "resnet50": _row(0.35), "v6": _row(0.5)}})
    table = script.markdown(summary, {"test_images": 9, "preset": "tiny", "data": "x", "seeds": [0]})
    names = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert names == ["untrained", "resnet50", "resnet50:pooling=pcam", "v6"]
