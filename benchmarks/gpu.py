"""The GPU benchmark's figures (run by ``benchmarks/gpu.sh``), written as one markdown table.

    python -m benchmarks gpu --device cuda --out bench-gpu.md        # one H100/H200, < 8 min
    python -m benchmarks gpu --device cpu --reduced --out dry.md     # the CPU dry run

Stages, each timed on its own and each a row of the table (``--skip`` leaves stages out):

1. ``synth``: a synthetic archive at 512 px (``--images``, at least 5,000 on the GPU), drawn in
   parallel processes;
2. ``embed``: ``embed_images`` of the default architecture (V6, ResNet50 roi at 512 px, width
   1024; random weights, fitted feature standardisation) in ``--precision`` (bf16 on the GPU),
   at batch 64 and 128, images decoded from the archive files by DataLoader worker processes
   (images/s, decode included);
3. ``index``: ``indexer.pipeline.run_index`` end to end over the whole archive (discovery,
   decoding workers, embedding, SQLite, Faiss build, save) with that checkpoint;
4. ``faiss``: Faiss at ``--vectors`` x 1024 (clustered unit vectors like ``benchmarks/search.py``):
   exact flat and IVF-flat (nlist 4096 at 1M; nprobe 32), on the GPU when Faiss has one: p50 of
   single queries, batched queries/s, recall@10 against exact;
5. ``upload``: upload search against the index of stage 3 served in this process (waitress on
   127.0.0.1), one client: p50 and the median ``timing_ms`` of every stage.

``--reduced`` shrinks every size (for the CPU dry run; the figures then only show that each
stage runs). Targets on one H100/H200 (issue 15): indexing >= 1,500 images/s, upload p50 <= 15
ms, single-query search p50 <= 1 ms at 1M.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import (
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
    import torch
    from torch.utils.data import DataLoader

    from chextriev.embedding import embed_images

    chosen = records[:max_images]
    loader = DataLoader(_Files(chosen), batch_size=batch, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    embed_images(loaded, [np.zeros((512, 512), np.float32)] * min(batch, 8))  # warm-up (cudnn, autocast)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    done = 0
    for images, boxes in loader:
        done += len(embed_images(loaded, images, boxes, batch_size=batch))
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


# ------------------------------------------------------------------------------ 4. faiss
def bench_faiss(n: int, dim: int, n_queries: int, device: str, nlist: int, nprobe: int) -> list[tuple]:
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(64, n // 500), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    chunk = 100_000
    vectors = np.concatenate([clustered_chunk(s, min(chunk, n - s), dim, centres, 0) for s in range(0, n, chunk)])
    queries = make_queries(vectors, n_queries, 1)
    gpu = device.startswith("cuda") and faiss.get_num_gpus() > 0
    resources = faiss.StandardGpuResources() if gpu else None
    if not gpu:  # OpenMP threads spinning on a busy CPU make single queries 50x slower (BENCHMARKS.md)
        faiss.omp_set_num_threads(1)

    def on_device(index):
        return faiss.index_cpu_to_gpu(resources, 0, index) if gpu else index

    rows = []
    started = time.perf_counter()
    flat = on_device(faiss.IndexFlatIP(dim))
    flat.add(vectors)
    build_flat = time.perf_counter() - started
    _, truth = flat.search(queries, 10)
    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    ivf_cpu = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf = on_device(ivf_cpu)
    sample = vectors[rng.choice(n, min(n, 64 * nlist), replace=False)]
    ivf.train(sample)
    ivf.add(vectors)
    if gpu:
        faiss.GpuParameterSpace().set_index_parameter(ivf, "nprobe", nprobe)
    else:
        ivf.nprobe = nprobe
    build_ivf = time.perf_counter() - started
    where = "GPU" if gpu else "CPU"
    for name, index, build in ((f"flat (exact), {where}", flat, build_flat),
                               (f"IVF{nlist},Flat nprobe {nprobe}, {where}", ivf, build_ivf)):
        index.search(queries[:8], 10)  # warm-up
        single = []
        for q in queries[: min(200, n_queries)]:
            t = time.perf_counter()
            index.search(q[None], 10)
            single.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        _, found = index.search(queries, 10)
        batched = len(queries) / (time.perf_counter() - t)
        rows.append((name, statistics.median(single), batched, recall_at(found, truth), build))
    return rows


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--compile", default="off", choices=("off", "on"),
                        help="the trunk compiled by TorchInductor (chextriev.compiled) in embed, index and upload")
    parser.add_argument("--reduced", action="store_true", help="small sizes (the CPU dry run)")
    parser.add_argument("--images", type=int, default=None, help="archive size (default 5,120; reduced 12)")
    parser.add_argument("--vectors", type=int, default=None, help="Faiss size (default 1,000,000; reduced 20,000)")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder, kept (default: a new temporary one, removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count, at most 16)")
    parser.add_argument("--upload-seconds", type=float, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=("embed", "index", "faiss", "upload"))
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
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU (use benchmarks/gpu.sh --cpu for the dry run)")
    keep_work = args.work is not None or args.keep
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    if not keep_work:  # archive, checkpoint and index: several GB in the full run
        atexit.register(shutil.rmtree, work, True)
    table = Table(f"GPU benchmark ({'reduced CPU dry run' if reduced else 'full'}), {time.strftime('%Y-%m-%d')}: "
                  f"{machine(args.device)}; {platform.python_version()}")
    wall = time.perf_counter()

    # 1. archive (~1.9 images per patient)
    t = time.perf_counter()
    archive = synth_archive(work / "archive", patients=max(1, round(n_images / 1.9)), size=512, workers=workers)
    records = read_archive(archive)
    table.row("synth", f"{len(records)} images at 512 px, {workers} processes", f"{time.perf_counter() - t:.0f} s")
    images, boxes, _ = archive_images(archive, 64)
    checkpoint = default_checkpoint(work / "v6-default.ckpt", images, boxes)
    loaded = load_checkpoint(checkpoint, device=args.device, precision=args.precision,
                             compile=args.compile == "on", compile_batch=8 if reduced else 64)
    precision = loaded.precision

    # 2. embedding
    if "embed" not in args.skip:
        for batch in ((4, 8) if reduced else (64, 128)):
            rate = bench_embed(loaded, records, batch, workers, max_images=min(len(records), 8 if reduced else 4_096))
            table.row("embed", f"default V6 at 512 px, {precision}, batch {batch}, decode in {workers} workers",
                      f"{rate:.0f} images/s" if rate >= 10 else f"{rate:.2f} images/s")

    # 3. indexing end to end
    index_dir = work / "index"
    if "index" not in args.skip or "upload" not in args.skip:
        from indexer.embedder import ModelEmbedder
        from indexer.pipeline import run_index

        batch = 8 if reduced else 128
        embedder = ModelEmbedder(checkpoint, device=args.device, batch_size=batch, precision=args.precision,
                                 compile=args.compile)
        summary = run_index(archive, embedder=embedder, index_dir=index_dir, workers=workers, batch_size=batch,
                            device=embedder.device, progress=False)
        rate = summary.indexed / summary.seconds
        table.row("index", f"`run_index`, {summary.indexed} images, batch {batch}, {workers} decoding workers, "
                  f"{embedder.loaded.precision}", f"{rate:.1f} images/s ({summary.seconds:.1f} s)",
                  ">= 1,500 images/s")
        del embedder

    # 4. faiss
    if "faiss" not in args.skip:
        nlist = 4096 if n_vectors >= 500_000 else max(16, int(np.sqrt(n_vectors)))
        for name, p50, batched, recall, build in bench_faiss(n_vectors, 1024, 2_000 if reduced else 10_000,
                                                             args.device, nlist, nprobe=32):
            table.row("faiss", f"{n_vectors:,} x 1024, {name}",
                      f"single-query p50 {p50:.3f} ms; batched {batched:,.0f} q/s; recall@10 {recall:.3f}; "
                      f"build {build:.1f} s", "p50 <= 1 ms at 1M" if "IVF" in name else "")

    # 5. upload search
    if "upload" not in args.skip:
        from benchmarks.load_test import compare_precisions, serve_in_process

        base = serve_in_process(checkpoint, None, index_dir, 0, 4, torch_threads=None, precision=args.precision,
                                compile=args.compile)
        logging.getLogger("server").setLevel(logging.WARNING)
        query_files = sorted((archive / "files").rglob("*.png"))[:20]
        result = compare_precisions({precision: base}, [p.read_bytes() for p in query_files], upload_seconds, 10, {})
        row = result[precision]
        stages = ", ".join(f"{k} {v}" for k, v in row["stages"].items())
        table.row("upload", f"1 client x {upload_seconds:.0f} s, {row['requests']} requests, {row['errors']} errors",
                  f"p50 {row['p50_ms']} ms, p90 {row['p90_ms']} ms; stage medians ms: {stages}", "p50 <= 15 ms")

    table.row("all", "wall time of the benchmark", f"{time.perf_counter() - wall:.0f} s", "<= 8 min")
    args.out.write_text(table.text())
    print(f"\nwrote {args.out}" + (f" (work folder {work})" if keep_work else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
