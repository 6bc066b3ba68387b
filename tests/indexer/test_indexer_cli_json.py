"""`chextriev index --json` and `chextriev index verify --json`: one JSON object on stdout with
the figures of the prose summary (both from one source: ``IndexSummary.figures`` and
``indexer.cli.verify_figures``; checked here by reading the prose back)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections import Counter

import pytest
from checkpoint_helpers import write_untrained_checkpoint

from chextriev_cli.main import main
from indexer.pipeline import IndexSummary

COUNTS = ("indexed", "unchanged", "duplicates", "skipped", "failed", "replaced")


def run(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


def read_index_prose(text: str) -> dict:
    """The figures of `chextriev index`'s printed summary, read back."""
    first, second, *reason_lines = text.strip().splitlines()
    head = re.fullmatch(r"discovered (\d+) file\(s\): " + ", ".join(rf"{c} (\d+)" for c in COUNTS), first)
    tail = re.fullmatch(r"index (\S+): (\d+) vectors; ([\d.]+) s \(([\d.]+) images/s\)", second)
    assert head and tail, text
    figures = {"discovered": int(head[1]), **{c: int(v) for c, v in zip(COUNTS, head.groups()[1:], strict=True)},
               "build_id": tail[1], "index_size": int(tail[2]), "seconds": float(tail[3]),
               "images_per_second": float(tail[4]), "reasons": {}}
    for line in reason_lines:
        count, reason = re.fullmatch(r"\s*(\d+) x (.*)", line).groups()
        figures["reasons"][reason] = int(count)
    return figures


def assert_prose_states(figures: dict, prose: dict) -> None:
    for key in ("discovered", *COUNTS, "index_size", "reasons"):
        assert prose[key] == figures[key], key
    assert prose["build_id"] == str(figures["build_id"])
    assert prose["seconds"] == pytest.approx(figures["seconds"], abs=0.05)
    assert prose["images_per_second"] == pytest.approx(figures["images_per_second"], abs=0.05)


def test_summary_prose_and_figures_agree():
    summary = IndexSummary(discovered=14, unchanged=2, indexed=7, duplicates=1, skipped=2, failed=1, replaced=1,
                           reasons=Counter({"lateral view (LL)": 1, "not an image": 1, "decode error": 1}),
                           seconds=2.5, index_size=9, build_id="b-3")
    figures = summary.figures()
    assert json.loads(json.dumps(figures, allow_nan=False)) == figures
    assert_prose_states(figures, read_index_prose(summary.format()))
    assert figures["images_per_second"] == pytest.approx(2.8)


@pytest.mark.slow
def test_index_json_run_and_its_prose_rerun(archive, tmp_path):
    root, written = archive
    checkpoint = write_untrained_checkpoint(tmp_path / "tiny.ckpt")
    index_dir = tmp_path / "idx"
    argv = ["index", "--data", str(root), "--checkpoint", str(checkpoint), "--index-dir", str(index_dir),
            "--workers", "0", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    code, out = run([*argv, "--json"])
    assert code == 0
    figures = json.loads(out)  # the whole of stdout is one JSON object
    assert figures["failed"] >= len(written["broken"]) and figures["index_size"] == figures["indexed"] > 0
    assert sum(figures["reasons"].values()) == figures["skipped"] + figures["failed"]
    code, again = run(argv)  # prose this time; nothing new to index
    assert code == 0
    rerun = read_index_prose(again)
    assert rerun["discovered"] == figures["discovered"] and rerun["indexed"] == 0
    assert rerun["index_size"] == figures["index_size"]


def test_verify_json_and_prose_agree(indexed):
    argv = ["index", "verify", "--index-dir", str(indexed.index_dir)]
    argv += ["--db", indexed.db_url] if indexed.db_url else []
    for broken in (False, True):
        if broken:  # delete the segment files the manifest names
            for path in (indexed.index_dir / "segments").iterdir():
                path.unlink()
        code, prose = run(argv)
        json_code, text = run([*argv, "--json"])
        figures = json.loads(text)
        assert code == json_code == (1 if broken else 0)
        assert figures["ok"] is (not broken) and figures["vectors_checked"] == "all"
        assert figures["index_dir"] == str(indexed.index_dir)
        listed = [line.removeprefix("DIFFERENCE: ") for line in prose.splitlines() if line.startswith("DIFFERENCE: ")]
        assert listed == figures["differences"] and bool(listed) is broken
        assert ("OK: catalog and index" in prose) is (not broken)
