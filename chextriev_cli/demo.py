"""`chextriev demo`: the main job end to end on the embedded default (the synthetic archive).

Steps, each skipped on a rerun when its output is already complete (a ``.done`` marker written
last, so a crash mid-step redoes only that step):

1. generate a synthetic archive;
2. train V6 and the global ResNet50 baseline (``synthetic-small`` preset) and the anatomy detector;
3. evaluate both and print the retrieval table (mAP/mHR/mRR at 3, 5, 10);
4. index the archive (or the real NIH sample with ``--data nih-sample``) into SQLite and Faiss;
5. start the server on 127.0.0.1, send a real query over HTTP, print the top-5 and the page's
   address, and keep serving until Ctrl-C (``--no-serve`` stops after the query).

Everything goes under one folder (``demo/`` by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from chextriev.cli_options import (
    LegacyValueBoolean,
    add_data_option,
    add_epochs_option,
    add_out_dir,
)
from chextriev.errors import ChextrievError

log = logging.getLogger(__name__)

DEMO_PATIENTS = 600
DEMO_SEED = 0
DEMO_SIZE = 512
DEMO_DICOM_SHARE = 0.2
DEMO_MODELS = ("v6", "resnet50")
DEMO_K = (3, 5, 10)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole job on the synthetic archive: generate, train, evaluate, index, serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_out_dir(parser, default=Path("demo"), help="folder for everything")
    add_data_option(
        parser, type=str, default="synthetic", metavar="synthetic|nih-sample|PATH",
        help="what to index and serve: the synthetic archive, the real NIH sample (found through "
        "CHEXTRIEV_NIH_SAMPLE or ../shared/data/nih-sample), or a folder",
    )
    parser.add_argument("--serve", action=LegacyValueBoolean, default=True,
                        help="keep serving after the query until Ctrl-C (--no-serve: stop after it)")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--patients", type=int, default=DEMO_PATIENTS, help="synthetic patients")
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help="synthetic image side in pixels")
    add_epochs_option(parser, dest="max_epochs", aliases=("--max-epochs",),
                      help="training epochs of each model (default: the preset's)")
    parser.set_defaults(func=run_demo)


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def _cli(*args: str) -> None:
    """Run a `chextriev` subcommand in a child process (fresh state, its own progress output)."""
    verbose = ["-v"] if log.isEnabledFor(logging.DEBUG) else []  # `chextriev -v demo`: every step verbose
    command = [sys.executable, "-m", "chextriev_cli.main", *verbose, *args]
    log.debug("running %s", " ".join(command))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ChextrievError(f"step failed (exit {result.returncode}): chextriev {' '.join(args)}")


def _done(folder: Path) -> bool:
    return (folder / ".done").exists()


def _mark_done(folder: Path, info: dict | None = None) -> None:
    (folder / ".done").write_text(json.dumps(info or {}, indent=1))


def nih_sample_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-sample"
    return Path(os.environ.get("CHEXTRIEV_NIH_SAMPLE", str(default)))


def _best_checkpoint(run_dir: Path) -> Path:
    best = run_dir / "best.ckpt"
    if best.exists():
        return best
    found = sorted(run_dir.rglob("*.ckpt"))
    if not found:
        raise ChextrievError(f"no checkpoint under {run_dir}")
    return found[0]


def generate_archive(out: Path, patients: int, size: int) -> Path:
    archive = out / "archive"
    _step(f"1/6 synthetic archive: {patients} patients at {size}px -> {archive}")
    if _done(archive):
        print("    already there, reusing it")
        return archive
    _cli("synth", "--out", str(archive), "--patients", str(patients), "--seed", str(DEMO_SEED),
         "--size", str(size), "--dicom-share", str(DEMO_DICOM_SHARE))
    _mark_done(archive)
    return archive


def train_models(out: Path, archive: Path, max_epochs: int | None) -> dict[str, Path]:
    checkpoints = {}
    for number, variant in enumerate(DEMO_MODELS, start=1):
        run_dir = out / "runs" / variant
        _step(f"2/6 training {variant} ({number}/{len(DEMO_MODELS)}), preset synthetic-small -> {run_dir}")
        if not _done(run_dir):
            args = ["train", "--variant", variant, "--preset", "synthetic-small", "--data", str(archive), "--out", str(run_dir),
                    "--cache-dir", str(out / "cache" / "features")]
            if max_epochs is not None:
                args += ["--epochs", str(max_epochs)]
            _cli(*args)
            _mark_done(run_dir)
        else:
            print("    already trained, reusing it")
        checkpoints[variant] = _best_checkpoint(run_dir)
    return checkpoints


def train_detector(out: Path, archive: Path) -> Path:
    path = out / "runs" / "detector" / "detector.pt"
    _step(f"3/6 anatomy detector -> {path}")
    if _done(path.parent):
        print("    already trained, reusing it")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The small CPU detector at 128 px: minutes on two cores, and it beats the atlas (BENCHMARKS.md).
    _cli("train-detector", "--data", str(archive), "--out-file", str(path), "--backbone", "small",
         "--image-size", "128", "--epochs", "8", "--max-train", "200")
    _mark_done(path.parent)
    return path


def evaluate_models(out: Path, archive: Path, checkpoints: dict[str, Path]) -> None:
    _step("4/6 evaluating on held-out patients (retrieval, SPEC protocol)")
    rows = []
    for variant, checkpoint in checkpoints.items():
        eval_dir = out / "eval" / variant
        if not _done(eval_dir):
            _cli("evaluate", "--checkpoint", str(checkpoint), "--data", str(archive), "--out", str(eval_dir),
                 "--no-skip", "--k", *map(str, DEMO_K))
            _mark_done(eval_dir)
        rows.append((variant, json.loads((eval_dir / "metrics.json").read_text())))
    print("Class-average mAP/mHR/mRR on the test split (held-out patients), skip=False:")
    print(format_retrieval_table(rows))


def format_retrieval_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table, one row a model: class-average mAP/mHR/mRR at each k (skip=False)."""
    from metrics.report import triple

    header = "| model | " + " | ".join(f"k={k} mAP/mHR/mRR" for k in DEMO_K) + " |"
    lines = [header, "|---|" + "---|" * len(DEMO_K)]
    for name, report in rows:
        cells = [triple(report["retrieval"][str(k)]["class_average"]) for k in DEMO_K]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def index_data(out: Path, source: Path, checkpoint: Path, detector: Path, label: str) -> tuple[str, Path]:
    """``chextriev index`` of ``source``: any source the indexer reads (the synthetic archive with
    its true boxes and labels, the NIH sample folder with its official labels, any folder)."""
    index_dir = out / "index" / label
    db_url = f"sqlite:///{(index_dir / 'catalog.sqlite').resolve()}"
    _step(f"5/6 indexing {source} -> {index_dir}")
    index_dir.mkdir(parents=True, exist_ok=True)
    # Incremental by design: a rerun indexes only what is new, so no marker is needed here.
    _cli("index", "--data", str(source), "--checkpoint", str(checkpoint), "--db", db_url,
         "--index-dir", str(index_dir), "--detector", str(detector))
    return db_url, index_dir


def serve_and_query(checkpoint: Path, detector: Path, db_url: str, index_dir: Path, query_image: Path,
                    serve: bool, port: int) -> None:
    import requests

    from server.readiness import free_port, wait_ready

    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    _step(f"6/6 serving on {base_url}")
    command = [sys.executable, "-m", "chextriev_cli.main", "serve", "--checkpoint", str(checkpoint),
               "--db", db_url, "--index-dir", str(index_dir), "--detector", str(detector),
               "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command)
    try:
        wait_ready(base_url, process)
        with open(query_image, "rb") as handle:
            response = requests.post(f"{base_url}/api/v1/search", files={"image": (query_image.name, handle)},
                                     data={"k": "5"}, timeout=60)
        response.raise_for_status()
        print(format_search_response(query_image, response.json()))
        print(f"\nWeb page: {base_url}/")
        if serve:
            print("Serving until Ctrl-C.", flush=True)
            process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def format_search_response(query_image: Path, payload: dict) -> str:
    findings = ", ".join(f"{f['name']} {f['probability']:.2f}" for f in payload["query"]["findings"][:3])
    lines = [f"Query {query_image.name} (most likely: {findings}; boxes from {payload['query']['box_source']})",
             f"{'rank':>4}  {'image id':>8}  {'similarity':>10}  known findings"]
    for rank, hit in enumerate(payload["results"], start=1):
        known = ", ".join(hit.get("known_findings") or []) or "none"
        lines.append(f"{rank:>4}  {hit['id']:>8}  {hit['similarity']:>10.3f}  {known}")
    return "\n".join(lines)


def _query_image(source: Path) -> Path:
    for pattern in ("*.png", "*.jpg", "*.dcm"):
        found = sorted(source.rglob(pattern))
        if found:
            return found[len(found) // 2]
    raise ChextrievError(f"no image to query under {source}")


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    archive = generate_archive(out, args.patients, args.size)
    checkpoints = train_models(out, archive, args.max_epochs)
    detector = train_detector(out, archive)
    evaluate_models(out, archive, checkpoints)
    if args.data == "synthetic":
        source, label = archive, "synthetic"
    elif args.data == "nih-sample":
        # The NIH folder itself (Data_Entry_2017 CSV + images/): read by chextriev.io's NIH reader,
        # so the index knows each real image's official labels, sex, age and view.
        source, label = nih_sample_dir(), "nih-sample"
        if not (source / "images").is_dir():
            raise ChextrievError(f"NIH sample not found at {source}; set CHEXTRIEV_NIH_SAMPLE")
    else:
        source, label = Path(args.data), Path(args.data).name
        if not source.exists():
            raise ChextrievError(f"--data {source}: no such folder")
    db_url, index_dir = index_data(out, source, checkpoints["v6"], detector, label)
    print(f"\nDemo pipeline ready in {time.monotonic() - started:.0f} s (everything under {out}/)")
    serve_and_query(checkpoints["v6"], detector, db_url, index_dir, _query_image(source), bool(args.serve), args.port)
    return 0
