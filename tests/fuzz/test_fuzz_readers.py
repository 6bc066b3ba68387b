"""The PNG, JPEG and DICOM readers under Hypothesis fuzzing from mutated real files
(``fuzz_readers.py`` beside this file, run as its own process per format).

Every input must decode to a valid float32 ``(H, W)`` image in ``[0, 1]`` or raise
``ImageReadError``, within the per-example deadline; the process must neither crash (a C
decoder aborting), nor hang (bounded by a wall-clock limit), nor use more than
:data:`MAX_PEAK_RSS_MB`. Budget, fixed (README development notes): ``CHEXTRIEV_FUZZ_EXAMPLES``
examples per format (default 2000), Hypothesis seed ``CHEXTRIEV_FUZZ_SEED`` (default 0, the
same examples in every CI run), 10 s deadline per example (a shared machine), 60 s hard limit per example, 300 s
per format. A failing input is kept and its path printed.

The PNG and JPEG seeds include the real NIH sample images (``CHEXTRIEV_NIH_SAMPLE``; without
it those two formats skip, unless CHEXTRIEV_REQUIRE_SHARED=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency (pip install -e .[dev])")

SCRIPT = Path(__file__).with_name("fuzz_readers.py")
EXAMPLES = int(os.environ.get("CHEXTRIEV_FUZZ_EXAMPLES", "2000"))
SEED = int(os.environ.get("CHEXTRIEV_FUZZ_SEED", "0"))
WALL_SECONDS = 300
#: The fuzzing process's peak resident memory may not pass this (a 16 M pixel frame limit).
MAX_PEAK_RSS_MB = 1024


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom"])
def test_readers_decode_or_refuse_every_mutated_file(fmt, tmp_path, request):
    nih = None
    if fmt in ("png", "jpeg"):
        nih = request.getfixturevalue("nih_sample")  # skips (or fails in CI) without it
    command = [sys.executable, str(SCRIPT), fmt, "--examples", str(EXAMPLES), "--seed", str(SEED),
               "--out", str(tmp_path)]
    if nih is not None:
        command += ["--nih", str(nih)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True,
                              timeout=WALL_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {fmt} fuzzer ran past {WALL_SECONDS} s: a reader hangs")
    summary_path = tmp_path / "summary.json"
    assert done.returncode in (0, 1) and summary_path.exists(), (
        f"the {fmt} fuzzing process died (exit {done.returncode}): a decoder crashed on "
        f"{tmp_path / 'current.bin'}\n" + done.stderr[-4000:])
    summary = json.loads(summary_path.read_text())
    assert not summary["failures"], json.dumps(summary["failures"], indent=1)
    assert summary["examples"] >= EXAMPLES
    assert summary["decoded"] > 0 and summary["refused"] > 0  # both outcomes were exercised
    assert summary["peak_rss_mb"] < MAX_PEAK_RSS_MB, summary
    print(json.dumps(summary))
