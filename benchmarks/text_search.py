"""Search by text over HTTP beside image search on the same index: a CheXzero-sized CLIP with random weights.

    python -m benchmarks text_search --patients 40 --size 512 --repeats 20

No CLIP-family release can be downloaded here, so the model is CheXzero's architecture at full
size (OpenAI CLIP ViT-B/32 at 224 px and its 12-layer, 512-wide text transformer, 151 M
parameters) with **random weights** (``open_clip.CLIP``, quick GELU, written as a plain OpenAI-CLIP
state dict ``.pt`` as CheXzero ships it; the cost of a forward pass does not depend on the
weights). ``chextriev model init --backbone chexzero --backbone-weights FILE`` makes the no-label
checkpoint (text tower kept), ``chextriev index`` indexes a synthetic archive, and ``chextriev
serve`` (``python -m server.cli``, the defaults: ``--precision auto``, ``--compile on``) answers
on loopback. Then, over HTTP (``requests``, one kept-alive connection), interleaved per repeat:

* ``text``: ``POST /api/v1/search/text`` (JSON; the prompts below in turn): the text tower, the
  search, the response and each result's text-region scores;
* ``upload``: ``POST /api/v1/search`` with an archived PNG: decode, the image tower, the search,
  the response (query preview JPEG included);
* ``by-id``: ``POST /api/v1/search/by-id/<id>``: the stored vector, no model call (the floor).

The stage columns are medians of the responses' ``timing_ms``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import REPO_ROOT, Table, interleaved, machine_line, median_ms, synth_archive
from chextriev.errors import ChextrievError
from server.readiness import free_port, wait_ready

PROMPTS = ("left pleural effusion", "enlarged cardiac silhouette", "right upper lobe consolidation",
           "pneumothorax at the left apex", "no acute cardiopulmonary abnormality")


def write_chexzero_sized_clip(path: Path, seed: int = 0) -> Path:
    """A randomly initialised OpenAI CLIP ViT-B/32 (CheXzero's architecture) as a plain state
    dict, its values rounded to float16 as OpenAI's releases are."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=512,
                           vision_cfg={"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                                     "layers": 12},
                           quick_gelu=True)
    torch.save({k: v.half().float() for k, v in model.state_dict().items()}, path)
    return path


def _run(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "chextriev_cli.main", *argv], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"chextriev {' '.join(argv[:2])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=40, help="synthetic patients (default 40)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repeats (default 20)")
    parser.add_argument("--k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("--work", type=Path, default=None, help="keep the work folder here (reused when rerun)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-text-search-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, work: Path) -> None:
    import requests

    print(machine_line(), flush=True)
    archive = synth_archive(work / "archive", args.patients, args.size)
    weights = work / "chexzero-random.pt"
    if not weights.is_file():
        write_chexzero_sized_clip(weights)
    checkpoint = work / "chexzero-random.ckpt"
    if not checkpoint.is_file():
        _run(["model", "init", "--backbone", "chexzero", "--backbone-weights", str(weights), "--data", str(archive),
              "--out-file", str(checkpoint), "--sample", "16", "--no-progress"])
    index_dir = work / "index"
    if not (index_dir / "manifest.json").is_file():
        _run(["index", "--data", str(archive), "--checkpoint", str(checkpoint), "--index-dir", str(index_dir),
              "--workers", "0", "--device", "cpu", "--no-progress"])
    port = free_port()
    log_path = work / "server.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "server.cli", "--index-dir", str(index_dir), "--port",
                                   str(port)], cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        try:
            status = wait_ready(f"http://127.0.0.1:{port}", server, timeout=600, log_path=log_path)
        except ChextrievError as error:
            raise SystemExit(str(error)) from None
        measure(args, base, status, archive, requests.Session())
    finally:
        server.terminate()
        server.wait(timeout=60)




def measure(args: argparse.Namespace, base: str, status: dict, archive: Path, session) -> None:
    if not status.get("text_search"):
        raise SystemExit(f"the model cannot search by text: {status.get('text_search_note')}")
    query = min((archive / "files").rglob("*.png"))
    upload = query.read_bytes()
    by_id = 1
    timings: dict[str, list[dict]] = {}
    turn = {"prompt": 0}

    def call(name: str, send):
        def go():
            response = send()
            assert response.status_code == 200, response.text
            timings.setdefault(name, []).append(response.json()["timing_ms"])
        return go

    def text():
        turn["prompt"] += 1
        return session.post(f"{base}/search/text", json={"text": PROMPTS[turn["prompt"] % len(PROMPTS)],
                                                         "k": args.k}, timeout=120)

    calls = {
        "text (POST /search/text)": call("text", text),
        "upload (POST /search, the archive's PNG)": call("upload", lambda: session.post(
            f"{base}/search", data={"k": str(args.k)}, files={"image": (query.name, upload, "image/png")},
            timeout=120)),
        "by-id (stored vector, no model call)": call("by-id", lambda: session.post(
            f"{base}/search/by-id/{by_id}", json={"k": args.k}, timeout=120)),
    }
    for fn in calls.values():  # warm-up (the first query settles --precision auto, ...)
        fn()
        fn()
    timings.clear()
    walls = interleaved(calls, args.repeats)
    print(f"\nmodel: CheXzero's architecture (ViT-B/32 + text transformer), RANDOM weights; precision "
          f"{status['precision']}, compiled {status['compiled']}; index of {status['index_size']} images "
          f"({args.size} px), k={args.k}, {args.repeats} interleaved repeats over HTTP\n")
    table = Table("Search by text beside image search, same index and server",
                  ("call", "wall p50 ms", "wall p90 ms", "model ms", "embed ms (wait + model)", "search ms",
                   "response ms (+ regions)", "server total ms"))
    print("\n".join(table.lines), flush=True)
    for (label, seconds), (name, stages) in zip(walls.items(), timings.items()):
        def median_of(*keys, stages=stages):
            return statistics.median(sum(t.get(key, 0.0) for key in keys) for t in stages)

        ordered = sorted(seconds)
        table.row(label, f"{median_ms(seconds):.1f}", f"{ordered[int(0.9 * (len(ordered) - 1))] * 1000:.1f}",
                  f"{median_of('model'):.1f}", f"{median_of('embed'):.1f}", f"{median_of('search'):.1f}",
                  f"{median_of('response', 'regions'):.1f}", f"{median_of('total'):.1f}")
    print()
    for name, stages in timings.items():
        keys = sorted({key for t in stages for key in t})
        print(f"{name}: " + ", ".join(f"{key} {statistics.median(t.get(key, 0.0) for t in stages):.1f}"
                                      for key in keys))
