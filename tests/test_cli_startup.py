"""Start-up: `chextriev --help`, `chextriev COMMAND --help` and argument errors import none of
the heavy libraries (checked through ``sys.modules`` of a fresh interpreter, not a clock; the
wall-clock figures are in BENCHMARKS.md, from ``benchmarks/startup.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "faiss", "pandas", "pytorch_lightning", "lightning", "sqlalchemy",
         "scipy", "flask", "PIL", "pydicom", "matplotlib", "torch_geometric", "waitress")


def _every_command() -> list[list[str]]:
    """``--help`` of the top command and of every (sub-)subcommand, found by walking the parser."""
    from chextriev.cli_options import iter_parsers
    from chextriev_cli.main import build_parser

    return [[*path, "--help"] for path, _ in iter_parsers(build_parser())]


COMMANDS = _every_command()

PROBE = """
import contextlib, io, json, sys
from chextriev_cli.main import main
argv = json.loads(sys.argv[1])
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}))
"""


def probe(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)], check=False,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_heavy_library():
    for argv in COMMANDS:
        result = probe(argv)
        assert result["code"] == 0, (argv, result["err"])
        assert result["heavy"] == [], f"`chextriev {' '.join(argv)}` imported {result['heavy']}"
        assert "usage:" in result["out"]


def test_help_lists_the_precision_choices():
    for command in ("index", "serve", "evaluate"):
        assert "{auto,fp32,bf16}" in probe([command, "--help"])["out"]


def test_argument_errors_are_fast_too():
    result = probe(["index", "--precision", "fp16"])
    assert result["code"] == 2 and "invalid choice: 'fp16'" in result["err"]
    assert result["heavy"] == []
    result = probe(["train", "--variant", "v6"])  # --data and --out missing
    assert result["code"] == 2 and "required" in result["err"] and result["heavy"] == []


def test_cli_name_lists_agree_with_their_sources():
    from chextriev.anatomy import cli as anatomy_cli
    from chextriev.anatomy.detector_nets import BACKBONES
    from indexer import cli as indexer_cli
    from indexer.faiss_factory import INDEX_TYPES

    assert anatomy_cli.BACKBONES == BACKBONES
    assert indexer_cli.INDEX_TYPES == INDEX_TYPES


def test_lazy_package_exports_still_resolve():
    from chextriev import model, synth

    assert model.RetrievalModel.__name__ == "RetrievalModel" and model.ModelOutput.__name__ == "ModelOutput"
    assert callable(synth.read_archive) and callable(synth.write_archive) and synth.SynthConfig
    import pytest

    with pytest.raises(AttributeError):
        model.not_a_name  # noqa: B018


def test_missing_faiss_says_which_extra_to_install(monkeypatch, caplog):
    import argparse

    from chextriev_cli import main as cli

    def no_faiss(args):
        raise ModuleNotFoundError("No module named 'faiss'", name="faiss")

    def parser():
        p = argparse.ArgumentParser()
        p.add_argument("-v", "--verbose", action="store_true")
        p.set_defaults(func=no_faiss)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main([]) == 2
    assert ".[cpu]" in caplog.text and ".[gpu]" in caplog.text
