"""The GPU benchmark's figures (run by ``benchmarks/gpu.sh``), written as one markdown table.

    python -m benchmarks gpu --device cuda --out bench-gpu.md        # one H100/H200, < 8 min
    python -m benchmarks gpu --device cpu --reduced --out dry.md     # the CPU dry run

Stages, each timed on its own and each one or more rows of the table (``--skip`` leaves stages
out; a stage that fails is a row with its error, and the run goes on; the table and the JSON
figures beside it are written after every stage, so a run stopped by its time bound keeps what
it measured):

1. ``synth``: a synthetic archive at 512 px (``--images``, at least 5,000 on the GPU), drawn in
   parallel processes;
2. ``embed``: ``embed_images`` of the default architecture (V6, ResNet50 roi at 512 px, width
   1024; random weights, fitted feature standardisation) in ``--precision`` (bf16 on the GPU),
   at batch 64 and 128: with the images decoded from the archive files by DataLoader worker
   processes (decode included), and on images decoded beforehand (decode excluded);
3. ``index``: ``chextriev index`` end to end over the whole archive (the command, in a child
   process: discovery, decoding workers, embedding, SQLite, Faiss, previews), its ``--json``
   figures;
4. ``upload``: upload search against that index served by ``chextriev serve``'s server
   (gunicorn, in a child process on 127.0.0.1), one client: p50 and the median ``timing_ms`` of
   every stage;
5. ``search``: ``--vectors`` x 1024 (clustered unit vectors like ``benchmarks/search.py``):
   exact search with torch on the device (the reference; fp32 and bf16 matrix products), the
   project's index (``VectorIndex.build``, the type ``auto`` picks) on the CPU, and, where Faiss
   sees a GPU (a Faiss GPU build installed), the same index searched through its GPU copies (the
   project's route, ``VectorIndex(device="cuda")``): p50 of single queries, batched queries/s,
   recall@10 against exact.

``--reduced`` shrinks every size (for the CPU dry run; the figures then only show that each
stage runs); ``--tiny`` uses the tests' tiny model (ResNet18 at 64 px) instead of the default
architecture (the dry run's test). Targets on one H100/H200 (issue 15): indexing >= 1,500
images/s, upload p50 <= 15 ms, single-query search p50 <= 1 ms at 1M.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    REPO_ROOT,
    Table,
    archive_images,
    clustered_chunk,
    default_checkpoint,
    machine_line,
    make_queries,
    recall_at,
    synth_archive,
)

log = logging.getLogger(__name__)


def machine(device: str) -> str:
    import torch

    line = machine_line()
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        line = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), " + line
    try:
        import faiss

        line += f", faiss {faiss.__version__} ({faiss.get_num_gpus()} GPU(s) visible to Faiss)"
    except ImportError:
        line += ", no faiss"
    return line


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ 2. embedding
class _Files:
    """A map-style dataset of archive files -> (image (H, W) float32, boxes (18, 4))."""

    def __init__(self, records):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from chextriev.io.images import load_image

        record = self.records[i]
        return load_image(record.source), record.boxes


def _collate(items):
    return [item[0] for item in items], [item[1] for item in items]


def bench_embed(loaded, records, batch: int, workers: int, max_images: int) -> float:
    """images/s of decode (``workers`` processes) + ``embed_images`` at ``batch``."""
    from torch.utils.data import DataLoader

    from chextriev.embedding import embed_images

    chosen = records[:max_images]
    loader = DataLoader(_Files(chosen), batch_size=batch, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    embed_images(loaded, [np.zeros((512, 512), np.float32)] * min(batch, 8))  # warm-up (cudnn, autocast)
    _sync(str(loaded.device))
    started = time.perf_counter()
    done = 0
    for images, boxes in loader:
        done += len(embed_images(loaded, images, boxes, batch_size=batch))
    _sync(str(loaded.device))
    return done / (time.perf_counter() - started)


def bench_embed_decoded(loaded, images: list, boxes: list, batch: int, total: int) -> float:
    """images/s of ``embed_images`` alone at ``batch`` on images decoded beforehand (cycled up to
    ``total``)."""
    from chextriev.embedding import embed_images

    embed_images(loaded, images[:batch], boxes[:batch], batch_size=batch)  # warm-up at this batch
    _sync(str(loaded.device))
    started = time.perf_counter()
    done = 0
    while done < total:
        pick = [(done + j) % len(images) for j in range(min(batch, total - done))]
        done += len(embed_images(loaded, [images[j] for j in pick], [boxes[j] for j in pick], batch_size=batch))
    _sync(str(loaded.device))
    return done / (time.perf_counter() - started)


# ------------------------------------------------------------------------------ 3. index
def bench_index(archive: Path, checkpoint: Path, index_dir: Path, args, workers: int, batch: int) -> dict:
    """``chextriev index`` end to end in a child process; its ``--json`` figures + wall time."""
    command = [sys.executable, "-m", "chextriev_cli.main", "index", "--data", str(archive), "--checkpoint",
               str(checkpoint), "--index-dir", str(index_dir), "--device", args.device, "--workers", str(workers),
               "--batch-size", str(batch), "--precision", args.precision, "--compile", args.compile,
               "--no-progress", "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=args.index_timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"chextriev index exited {done.returncode}: {done.stderr[-1500:]}")
    figures = json.loads(done.stdout)
    figures["wall_s"] = wall
    return figures


# ------------------------------------------------------------------------------ 4. upload
@contextlib.contextmanager
def served(index_dir: Path, checkpoint: Path, args):
    """``chextriev serve`` of ``index_dir`` in a child process on 127.0.0.1 (a fresh process: this
    one has run torch's thread pools, which a forked child can deadlock on); its base URL."""
    from server.readiness import free_port, wait_ready

    port = free_port()
    command = [sys.executable, "-m", "chextriev_cli.main", "serve", "--index-dir", str(index_dir), "--checkpoint",
               str(checkpoint), "--port", str(port), "--device", args.device, "--precision", args.precision,
               "--compile", args.compile]
    log_path = index_dir.parent / "serve.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, timeout=args.index_timeout, log_path=log_path)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# ------------------------------------------------------------------------------ 5. search
def _vectors(n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(64, n // 500), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return np.concatenate([clustered_chunk(s, min(100_000, n - s), dim, centres, 0)
                           for s in range(0, n, 100_000)])


def _time_queries(search, queries: np.ndarray, singles: int) -> tuple[float, float, np.ndarray]:
    """(single-query p50 ms, batched queries/s, found ids (q, 10)) of ``search(q (n, D)) -> ids``."""
    search(queries[:8])  # warm-up
    single = []
    for q in queries[:singles]:
        t = time.perf_counter()
        search(q[None])
        single.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    found = search(queries)
    return statistics.median(single), len(queries) / (time.perf_counter() - t), found


def bench_search(n: int, dim: int, n_queries: int, device: str, table: Table, singles: int) -> None:
    """Exact search with torch on ``device`` (fp32: the reference, and bf16), the project's index
    on the CPU, and through its GPU copies where Faiss sees a GPU: one row each."""
    import torch

    vectors = _vectors(n, dim)
    queries = make_queries(vectors, n_queries, 1)
    started = time.perf_counter()
    gallery = torch.from_numpy(vectors).to(device)
    load_s = time.perf_counter() - started
    truth = None
    for dtype in (torch.float32, torch.bfloat16):
        matrix = gallery.to(dtype)

        def exact(q, matrix=matrix, dtype=dtype):
            with torch.inference_mode():
                scores = torch.from_numpy(np.ascontiguousarray(q)).to(device, dtype) @ matrix.T
                return scores.float().topk(10, dim=1).indices.cpu().numpy()

        p50, batched, found = _time_queries(exact, queries, singles)
        if truth is None:
            truth = found
        name = "fp32" if dtype == torch.float32 else "bf16"
        table.row("search", f"{n:,} x {dim}, exact with torch ({name} matrix product + top-k) on {device}",
                  f"single-query p50 {p50:.3f} ms; batched {batched:,.0f} q/s; recall@10 {recall_at(found, truth):.3f}; "
                  f"copy to the device {load_s:.1f} s", "p50 <= 1 ms at 1M")
        del matrix
    del gallery
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    import faiss

    from indexer.vector_index import VectorIndex

    ids = np.arange(n, dtype=np.int64)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    for where in ("cpu", "cuda") if device.startswith("cuda") else ("cpu",):
        if where == "cuda" and gpus == 0:
            table.row("search", f"{n:,} x {dim}, the project's index on the GPU (Faiss GPU copies)",
                      f"not measured: faiss {faiss.__version__} sees no GPU (the carried faiss-cpu; "
                      "a Faiss GPU build installed by the user is searched through this route)")
            continue
        started = time.perf_counter()
        index = VectorIndex.build(ids, vectors, index_type="auto", device=where)
        build_s = time.perf_counter() - started

        def project(q, index=index):
            return index.search(q, 10)[1]

        p50, batched, found = _time_queries(project, queries, singles)
        on = "GPU copies" if where == "cuda" else f"CPU, {os.cpu_count()} cores"
        table.row("search", f"{n:,} x {dim}, the project's index ({index.factory}, nprobe {index.nprobe}"
                  f"{f', re-rank {index.rerank} x k' if index.index_type == 'ivf-pq' else ''}) on the {on}",
                  f"single-query p50 {p50:.3f} ms; batched {batched:,.0f} q/s; recall@10 {recall_at(found, truth):.3f}; "
                  f"build {build_s:.0f} s", "p50 <= 1 ms at 1M")
        del index


# ------------------------------------------------------------------------------ main
class Run:
    """The table, the JSON figures beside it, written after every stage; a stage that raises is
    a row with its error."""

    def __init__(self, table: Table, out: Path):
        self.table, self.out, self.figures = table, out, {}

    def stage(self, name: str, fn) -> object:
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as error:  # noqa: BLE001 - reported, the next stage runs
            log.debug("stage %s failed:\n%s", name, traceback.format_exc())
            self.table.row(name, "FAILED", f"{type(error).__name__}: {str(error).strip()[-600:]}")
            result = None
        self.figures[f"{name}_s"] = round(time.perf_counter() - started, 1)
        self.write()
        return result

    def write(self) -> None:
        self.out.write_text(self.table.text())
        self.out.with_suffix(".json").write_text(json.dumps(self.figures, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="off", choices=("off", "on"),
                        help="the trunk compiled by TorchInductor (chextriev.compiled) in embed, index and upload")
    parser.add_argument("--reduced", action="store_true", help="small sizes (the CPU dry run)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model instead of the default architecture")
    parser.add_argument("--images", type=int, default=None, help="archive size (default 5,120; reduced 12)")
    parser.add_argument("--image-side", type=int, default=512, help="side of the synthetic images")
    parser.add_argument("--vectors", type=int, default=None, help="search size (default 1,000,000; reduced 20,000)")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder, kept (default: a new temporary one, removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count, at most 16)")
    parser.add_argument("--upload-seconds", type=float, default=None)
    parser.add_argument("--index-timeout", type=float, default=240, help="seconds chextriev index may take")
    parser.add_argument("--skip", nargs="*", default=[], choices=("embed", "index", "search", "upload"))
    parser.add_argument("--out", type=Path, default=Path("bench-gpu.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.synthetic import read_archive

    reduced = args.reduced
    n_images = args.images or (12 if reduced else 5_120)
    n_vectors = args.vectors or (20_000 if reduced else 1_000_000)
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    upload_seconds = args.upload_seconds or (10.0 if reduced else 30.0)
    batches = (4, 8) if reduced else (64, 128)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU (use benchmarks/gpu.sh --cpu for the dry run)")
    keep_work = args.work is not None or args.keep
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    if not keep_work:  # archive, checkpoint and index: several GB in the full run
        atexit.register(shutil.rmtree, work, True)
    model = "tiny model (ResNet18 at 64 px)" if args.tiny else "default V6 at 512 px"
    run = Run(Table(f"GPU benchmark ({'reduced CPU dry run' if reduced else 'full'}), {time.strftime('%Y-%m-%d')}: "
                    f"{machine(args.device)}; Python {platform.python_version()}; {model}, random weights"),
              args.out)
    wall = time.perf_counter()

    # 1. archive (~1.9 images per patient) and the checkpoint
    t = time.perf_counter()
    archive = synth_archive(work / "archive", patients=max(1, round(n_images / 1.9)), size=args.image_side,
                            workers=workers)
    records = read_archive(archive)
    run.table.row("synth", f"{len(records)} images at {args.image_side} px, {workers} processes",
                  f"{time.perf_counter() - t:.0f} s")
    images, boxes, _ = archive_images(archive, 16 if args.tiny else 64)
    overrides = {}
    if args.tiny:
        from chextriev.model.config import TINY

        overrides = dict(TINY)
    checkpoint = default_checkpoint(work / ("tiny.ckpt" if args.tiny else "v6-default.ckpt"), images, boxes,
                                    **overrides)
    loaded = load_checkpoint(checkpoint, device=args.device, precision=args.precision,
                             compile=args.compile == "on", compile_batch=batches[0])
    precision = loaded.precision
    run.write()

    # 2. embedding, decode included and excluded
    if "embed" not in args.skip:
        max_images = min(len(records), 8 if reduced else 4_096)

        def embed():
            decoded, decoded_boxes, _ = archive_images(archive, min(len(records), 8 if reduced else 1_024))
            for batch in batches:
                rate = bench_embed(loaded, records, batch, workers, max_images)
                run.table.row("embed", f"{model}, {precision}, batch {batch}, decode in {workers} worker processes "
                              "(included)", f"{rate:.0f} images/s" if rate >= 10 else f"{rate:.2f} images/s")
                run.figures[f"embed_b{batch}_with_decode"] = rate
                rate = bench_embed_decoded(loaded, decoded, decoded_boxes, batch, max_images)
                run.table.row("embed", f"{model}, {precision}, batch {batch}, images decoded beforehand (decode "
                              "excluded)", f"{rate:.0f} images/s" if rate >= 10 else f"{rate:.2f} images/s")
                run.figures[f"embed_b{batch}_decoded"] = rate
                run.write()

        run.stage("embed", embed)
    loaded = None  # the GPU memory back before indexing
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    # 3. chextriev index end to end
    index_dir = work / "index"
    batch = batches[-1]
    if "index" not in args.skip or "upload" not in args.skip:
        def index():
            figures = bench_index(archive, checkpoint, index_dir, args, workers, batch)
            indexed = int(figures.get("indexed", 0))
            rate = indexed / max(figures["wall_s"], 1e-9)
            run.figures["index"] = figures
            run.table.row("index", f"`chextriev index`, {indexed} images, batch {batch}, {workers} decoding workers, "
                          f"{args.precision}, compile {args.compile}",
                          f"{rate:.1f} images/s end to end ({figures['wall_s']:.1f} s, the command's start included)",
                          ">= 1,500 images/s")

        run.stage("index", index)

    # 4. upload search
    if "upload" not in args.skip and (index_dir / "manifest.json").is_file():
        def upload():
            from benchmarks.load_test import compare_precisions

            with served(index_dir, checkpoint, args) as base:
                query_files = sorted((archive / "files").rglob("*.png"))[:20]
                result = compare_precisions({precision: base}, [p.read_bytes() for p in query_files],
                                            upload_seconds, 10, {})
            row = result[precision]
            run.figures["upload"] = row
            stages = ", ".join(f"{k} {v}" for k, v in row["stages"].items())
            run.table.row("upload", f"`chextriev serve` (1 worker), 1 client x {upload_seconds:.0f} s, "
                          f"{row['requests']} requests, {row['errors']} errors",
                          f"p50 {row['p50_ms']} ms, p90 {row['p90_ms']} ms; stage medians ms: {stages}", "p50 <= 15 ms")

        run.stage("upload", upload)

    # 5. vector search
    if "search" not in args.skip:
        run.stage("search", lambda: bench_search(n_vectors, 1024, 2_000 if reduced else 10_000, args.device,
                                                 run.table, singles=50 if reduced else 200))

    run.table.row("all", "wall time of the benchmark", f"{time.perf_counter() - wall:.0f} s", "<= 8 min")
    run.write()
    print(f"\nwrote {args.out}" + (f" (work folder {work})" if keep_work else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
