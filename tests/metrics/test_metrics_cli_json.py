"""`chextriev evaluate --json`: one JSON object on stdout with the figures of the prose summary
(both printed from ``metrics.report.summary``; checked here by reading the prose back)."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from chextriev_cli.main import main
from metrics.report import fmt


def read_prose_summary(text: str) -> dict:
    """The figures of the printed markdown summary, read back independently of its writer."""
    figures: dict = {"meta": {}, "retrieval": {}}
    ks: list[str] = []
    for line in text.splitlines():
        if line.startswith("Options: "):
            figures["options"] = line[len("Options: "):]
        elif match := re.fullmatch(r"- images: (\d+) \((\d+) normal: never queries\)", line):
            figures["n_images"], figures["n_normal"] = int(match[1]), int(match[2])
        elif match := re.fullmatch(r"- (\w+): (.*)", line):
            figures["meta"][match[1]] = match[2]
        elif line.startswith("| average |"):
            ks = re.findall(r"k=(\d+)", line)
        elif match := re.fullmatch(r"\| (class|weighted) average \| (.*) \|", line):
            for k, cell in zip(ks, match[2].split(" | "), strict=True):
                figures["retrieval"].setdefault(k, {})[f"{match[1]}_average"] = cell
    return figures


@pytest.fixture(scope="module")
def both_outputs(tiny_checkpoint, tiny_folder, tmp_path_factory):
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_folder), "--k", "1", "3",
              "--batch-size", "4", "--no-figures", "--no-localization", "--device", "cpu"]
    outputs = []
    for extra in ([], ["--json"]):
        out_dir = tmp_path_factory.mktemp("eval")
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            assert main([*common, "--out", str(out_dir), *extra]) == 0
        outputs.append((stdout.getvalue(), out_dir))
    return outputs


def test_json_is_one_object_with_the_prose_figures(both_outputs):
    (prose, _), (text, out_dir) = both_outputs
    figures = json.loads(text)  # nothing else on stdout
    read = read_prose_summary(prose)
    assert read["n_images"] == figures["n_images"] == 8
    assert read["n_normal"] == figures["n_normal"]
    assert read["options"] == figures["options"]
    assert read["meta"] == {key: str(value) for key, value in figures["meta"].items()}
    assert set(read["retrieval"]) == set(figures["retrieval"]) == {"1", "3"}
    for k, averages in figures["retrieval"].items():
        for name, values in averages.items():
            assert read["retrieval"][k][name] == "/".join(fmt(values[m]) for m in ("mAP", "mHR", "mRR"))
    assert figures["out"] == str(out_dir)
    assert {p.rsplit("/", 1)[-1] for p in figures["files"]} == {"metrics.json", "retrieval.csv", "report.md"}


def test_json_figures_are_those_of_metrics_json(both_outputs):
    _, (text, out_dir) = both_outputs
    figures = json.loads(text)
    written = json.loads((out_dir / "metrics.json").read_text())
    assert figures["n_images"] == written["n_images"]
    for k, averages in figures["retrieval"].items():
        for name, values in averages.items():
            assert values == {m: written["retrieval"][k][name][m] for m in ("mAP", "mHR", "mRR")}
