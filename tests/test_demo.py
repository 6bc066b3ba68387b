"""`chextriev demo` end to end on a tiny archive: generate, train, evaluate, index, serve a real
query over HTTP on loopback, then stop (`--serve 0`); a rerun reuses every step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chextriev_cli.demo import format_retrieval_table


def test_format_retrieval_table_marks_undefined_values():
    report = {"retrieval": {str(k): {"class_average": {"mAP": 0.5, "mHR": 0.25, "mRR": None}} for k in (3, 5, 10)}}
    table = format_retrieval_table([("v6", report)])
    assert table.splitlines()[2].startswith("| v6 | .500/.250/")
    assert "nan" not in table.lower()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "chextriev_cli.main", "demo", "--out", str(out), "--patients", "8",
               "--size", "128", "--epochs", "1", "--no-serve"]
    first = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert ": warning: --" not in first.stderr  # no deprecated spelling: each step uses the canonical options
    # quiet by default (chextriev/logs.py): no library set-up chatter, no Lightning banner or table
    for chatter in ("setup plugin", "Context impl", "faiss.loader", "GPU available", "TPU available", "💡 Tip",
                    "Seed set to", "LeafSpec"):
        assert chatter not in first.stderr, chatter
    assert "Trainable params" not in first.stdout
    assert "| v6 |" in first.stdout and "| resnet50 |" in first.stdout
    assert "Web page: http://127.0.0.1:" in first.stdout
    top = [line for line in first.stdout.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert len(top) >= 3, first.stdout[-2000:]
    for step in ("archive", "runs/v6", "runs/resnet50", "runs/detector", "eval/v6", "eval/resnet50"):
        assert (out / step / ".done").exists(), step

    second = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing it") >= 4
    assert "indexed 0," in second.stdout  # the index step found every file unchanged


def test_nih_sample_is_indexed_with_the_official_labels(nih_sample):
    """The demo indexes the NIH folder itself (no manifest bridge): the indexer's records carry
    the official labels, sex, age and view of every image."""
    from indexer.decode import catalog_meta
    from indexer.discovery import discover

    records = discover(nih_sample)
    assert len(records) == 621
    rows = {r.image_id: catalog_meta(r) for r in records}
    row = rows["00000075_000"]
    # Official label file: "00000075_000.png,Cardiomegaly,0,75,61,F,PA,..."
    assert row["raw_view"] == "PA" and row["sex"] == "F" and row["age"] == 61
    assert row["known_findings"]["Cardiomegaly"] == 1 and sum(row["known_findings"].values()) == 1
    assert sum(r["known_findings"]["Infiltration"] for r in rows.values()) == 123  # sample README
