"""Peak memory of ONE upload request: hostile files (decompression bombs, lying headers) against
normal uploads, each in a fresh server process.

    python -m benchmarks request_memory [--work DIR] [--python PY --code DIR]

Builds a tiny index once (``chextriev synth`` 6 patients at 128 px, a tiny v6 checkpoint,
``chextriev index``, with the interpreter and checkout of the cases) under ``--work``; then, per case, starts a new Python process that builds
the app (``create_app``, model, index and catalog loaded), answers one warm-up upload, resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``), answers the case's upload through the
Flask test client (the whole request: form parsing, decoding, embedding, response) and reports
the process's peak RSS above what it held before (``VmHWM`` - ``VmRSS``, MiB), the status and
the seconds. ``--python``/``--code`` run the cases with another interpreter and checkout (for
the before/after figures: ``--python ../main/.venv/bin/python --code ../main``). The hostile
files come from ``tests/hostile_files.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import REPO_ROOT

CASES = {
    "normal: 2048 x 2048 16-bit PNG": "hostile.normal_png(2048)",
    "normal: 3000 x 3000 16-bit DICOM": "hostile.dicom_bytes(hostile.image_dataset(3000, 3000))",
    "at the limit: 8192 x 8192 8-bit PNG (64 Mpx)": "hostile.png_at_limit()",
    "hostile: deflated DICOM, 16 x 4096 x 4096 frames (510 kB)": "hostile.deflated_multiframe()",
    "hostile: JPEG 2000 SIZ 60000 x 60000 in a 64 x 64 DICOM": "hostile.j2k_size_lie()",
    "hostile: PNG IHDR 65535 x 65535": "hostile.png_huge_ihdr()",
    "hostile: PNG IDAT inflating to 200 MB": "hostile.png_idat_bomb(200)",
    "hostile: PNG with 40 zTXt chunks of 16 MB each": "hostile.png_text_bomb()",
    "hostile: JPEG SOF 65500 x 65500": "hostile.jpeg_huge_sof()",
}

CHILD = r"""
import io, json, sys, time
import hostile_files as hostile  # tests/hostile_files.py: the child's PYTHONPATH names tests/
from server import create_app

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

app = create_app({config!r})
client = app.test_client()
warm = client.post("/api/v1/search", data={{"image": (io.BytesIO(hostile.normal_png(256)), "w.png")}})
assert warm.status_code == 200, warm.data[:300]
data = {make}
before = status_kb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
started = time.perf_counter()
response = client.post("/api/v1/search", data={{"image": (io.BytesIO(data), "q")}})
seconds = time.perf_counter() - started
peak = status_kb("VmHWM")
body = response.get_data(as_text=True)
print(json.dumps({{"status": response.status_code, "upload_kb": len(data) // 1024,
                  "peak_above_mb": round((peak - before) / 1024, 1), "seconds": round(seconds, 2),
                  "message": (json.loads(body).get("error") or {{}}).get("message", "")[:90]
                  if response.status_code != 200 else ""}}))
"""


BUILD = r"""
import argparse, sys
from pathlib import Path
from chextriev.synth import cli as synth_cli
from chextriev.training.quick import train_tiny_checkpoint
from indexer import cli as index_cli

def run(module, argv):
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    assert args.func(args) == 0

work = Path({work!r})
run(synth_cli, ["synth", "--out", str(work / "archive"), "--patients", "6", "--size", "128"])
checkpoint = train_tiny_checkpoint(work / "archive", work / "model", variant="v6")
run(index_cli, ["index", "--data", str(work / "archive"), "--checkpoint", str(checkpoint),
                "--index-dir", str(work / "index"), "--workers", "0", "--device", "cpu", "--no-progress"])
"""


def build_index(work: Path, python: str, code: Path) -> dict:
    """The tiny index (built once per ``work``, by ``python`` in ``code``) as app settings."""
    if not (work / "index" / "manifest.json").exists():
        subprocess.run([python, "-c", BUILD.format(work=str(work))], cwd=code, check=True,
                       capture_output=True, timeout=1200)
    return {"CHECKPOINT": str(work / "model" / "best.ckpt"), "INDEX_DIR": str(work / "index"),
            "LOAD": "sync", "TORCH_THREADS": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "chextriev-bench-memory")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the cases")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="checkout the cases run in")
    args = parser.parse_args(argv)
    config = build_index(args.work, args.python, args.code)
    # the cases' files are made by the test suite's hostile-file makers (tests/hostile_files.py)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"),
                                                                     os.environ.get("PYTHONPATH")]))}
    print("| case | status | upload | peak RSS above idle | seconds |\n|---|---|---|---|---|")
    for name, make in CASES.items():
        child = CHILD.format(config=config, make=make)
        done = subprocess.run([args.python, "-c", child], cwd=args.code, capture_output=True, text=True,
                              timeout=600, check=False, env=env)
        if done.returncode != 0:
            print(f"| {name} | process failed ({done.returncode}): {done.stderr.strip()[-120:]} | | | |")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {result['status']} {result['message']} | {result['upload_kb']} kB | "
              f"{result['peak_above_mb']} MiB | {result['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
