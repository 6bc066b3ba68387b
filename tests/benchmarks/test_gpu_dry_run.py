"""The GPU benchmark's prepared command, run as its CPU dry run (``benchmarks/gpu.sh --cpu``) with
the tiny model and small sizes: every stage runs and reports, none fails; the table and the JSON
figures are written. (The full run needs an H100/H200: BENCHMARKS.md, *GPU*.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import child_env

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_stage(tmp_path):
    env = child_env(OUT=str(tmp_path), PYTHON=sys.executable,
                    BENCH_ARGS=f"--tiny --images 6 --image-side 128 --vectors 3000 --upload-seconds 3 --workers 1 "
                               f"--work {tmp_path / 'work'}")
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--cpu"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "bench-gpu-cpu.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    stages = [row.split("|")[1].strip() for row in rows]
    assert "FAILED" not in table, table
    assert stages.count("synth") == 1 and stages.count("embed") == 4 and stages.count("index") == 1
    assert stages.count("upload") == 1 and stages.count("search") == 3 and stages[-1] == "all"
    assert "decode excluded" in table and "decode in 1 worker processes (included)" in table
    assert "exact with torch (fp32" in table and "the project's index" in table
    figures = json.loads((tmp_path / "bench-gpu-cpu.json").read_text())
    assert figures["index"]["indexed"] >= 6 and figures["upload"]["errors"] == 0 and figures["upload"]["requests"] > 0
    assert figures["embed_b4_decoded"] > 0 and figures["embed_b8_with_decode"] > 0


def test_gpu_script_refuses_an_unknown_mode():
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--nonsense"], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "usage: benchmarks/gpu.sh" in done.stderr
