"""The benchmarks package: ``python -m benchmarks`` lists and runs its modules, no code of the
checkout edits ``sys.path``, and the shared harness (machine line, timing, fixtures) does what
the benchmarks rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness
from benchmarks.__main__ import names

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_python_m_benchmarks_lists_every_module_and_refuses_an_unknown_name():
    listed = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    modules = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert names() == [m for m in modules if m != "harness"]
    for name in names():
        assert re.search(rf"^  {name} +\S", listed, flags=re.MULTILINE), name  # with its summary
    wrong = subprocess.run([sys.executable, "-m", "benchmarks", "no-such-bench"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60, check=False)
    assert wrong.returncode == 2 and "no benchmark named 'no-such-bench'" in wrong.stderr


def test_a_benchmark_runs_by_its_name_with_hyphens_or_underscores():
    for spelling in ("retrieval-metrics", "retrieval_metrics"):
        done = subprocess.run([sys.executable, "-m", "benchmarks", spelling, "--queries", "200", "--embed-n", "100"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "retrieval_metrics: 200 queries" in done.stdout


def test_no_code_of_the_checkout_edits_sys_path():
    """The packages are importable as installed (``pip install -e .``) or from the checkout's root
    (``python -m``): no module, benchmark, script or test inserts folders into ``sys.path`` (the
    tests' helpers through pytest's ``pythonpath``, their child processes through
    tests/child_env.py)."""
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\[[^\]]*\]\s*=|sys\.path\s*=")
    packages = ("benchmarks", "chextriev", "chextriev_cli", "indexer", "metrics", "server", "tests")
    offenders = [str(path.relative_to(REPO_ROOT)) for package in packages
                 for path in (REPO_ROOT / package).rglob("*.py") if edit.search(path.read_text())]
    assert offenders == []


def test_machine_line_names_the_cpu_and_its_bf16_features():
    from chextriev.precision import cpu_bf16_features

    line = harness.machine_line()
    found = cpu_bf16_features()
    assert line.startswith(harness.cpu_model())
    assert f"AMX: {'yes' if 'amx_bf16' in found else 'no'}" in line
    assert f"AVX-512 bf16: {'yes' if 'avx512_bf16' in found else 'no'}" in line
    assert "load average" in line and "torch" in line


def test_interleaved_alternates_the_calls_and_times_each():
    order: list[str] = []
    times = harness.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3)
    assert order == ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)


def test_table_prints_rows_as_they_come_and_pads_missing_cells(capsys):
    table = harness.Table("title", ("stage", "figure", "target"))
    table.row("embed", "12 images/s")
    assert capsys.readouterr().out == "| embed | 12 images/s |  |\n"
    assert table.text() == "title\n\n| stage | figure | target |\n|---|---|---|\n| embed | 12 images/s |  |\n"


def test_clustered_vectors_are_unit_rows_and_queries_find_their_cases():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((64, 32)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = harness.clustered_chunk(0, 500, 32, centres, seed=1)
    np.testing.assert_array_equal(vectors, harness.clustered_chunk(0, 500, 32, centres, seed=1))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    queries = harness.make_queries(vectors, 20, seed=2)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert harness.recall_at(truth, truth) == 1.0
    assert harness.recall_at(truth[:, :5], truth[:, 5:]) == 0.0


def test_top_k_overlap_of_an_embedding_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 16)).astype(np.float32)
    assert harness.top_k_overlap(a, a, 10) == 1.0
    assert harness.top_k_overlap(a, rng.standard_normal((40, 16)).astype(np.float32), 10) < 0.6
    assert harness.top_k_overlap(a[:1], a[:1], 10) == 1.0  # a gallery of one: nothing to disagree on


def test_default_checkpoint_loads_is_reused_and_redrawn_under_another_scale_rule(tmp_path):
    import torch

    from chextriev.checkpoint import load_checkpoint
    from chextriev.model.config import TINY

    images = [np.random.default_rng(i).random((64, 64)).astype(np.float32) for i in range(4)]
    path = harness.default_checkpoint(tmp_path / "v6.ckpt", images, **TINY)
    loaded = load_checkpoint(path)
    assert loaded.variant == "v6" and loaded.image_size == TINY["image_size"]
    features = loaded.model.feature_module()
    assert features is not None and float(features.feature_scale.min()) > 0  # fitted on the images
    stamp = path.stat().st_mtime_ns
    assert harness.default_checkpoint(path, images, **TINY) == path and path.stat().st_mtime_ns == stamp
    data = torch.load(path, weights_only=True)
    data["hyper_parameters"]["feature_scale_rule"] = "relative 0.01"
    torch.save(data, path)
    harness.default_checkpoint(path, images, **TINY)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["feature_scale_rule"].startswith("absolute")


@pytest.mark.parametrize("name", names())
def test_every_benchmark_answers_help(name, monkeypatch, capsys):
    """``python -m benchmarks NAME --help`` (the dispatcher in this process: importing every module
    once is what the subprocesses would do, without their start-up)."""
    from benchmarks.__main__ import main

    monkeypatch.setattr(sys, "argv", ["python -m benchmarks"])  # the dispatcher sets it for argparse
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert f"python -m benchmarks {name}" in capsys.readouterr().out
