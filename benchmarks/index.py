"""End-to-end indexing speed: images/s from files on disk to a saved index (discovery, decoding in
worker processes, embedding with the checkpoint's model, SQL writes, Faiss build and atomic save).

    .venv/bin/python -m benchmarks index --images 2000 --size 256 --workers 2
    .venv/bin/python -m benchmarks index --checkpoint model.ckpt --device cuda

Without ``--checkpoint`` a ``tiny`` checkpoint (ResNet18, 64 px, width 64) is trained in seconds
on a few synthetic images and used: the figure then measures the indexer's own overhead
(decode, DB, index) more than the model; with a full ResNet50/512 checkpoint the model dominates.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import machine_line


def make_archive(out: Path, images: int, size: int, seed: int) -> int:
    from chextriev.synth.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    # About 2.5 images per patient (1-4 studies, frontal + sometimes lateral).
    args = parser.parse_args(["synth", "--out", str(out), "--patients", str(max(1, images * 2 // 5)),
                              "--seed", str(seed), "--size", str(size), "--workers", "2"])
    args.func(args)
    return sum(1 for p in (out / "files").rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="approximate archive size")
    parser.add_argument("--size", type=int, default=256, help="synthetic image side")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--index-type", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary archive and index")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from indexer.embedder import ModelEmbedder
    from indexer.pipeline import run_index

    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    t = time.perf_counter()
    n_files = make_archive(work / "archive", args.images, args.size, args.seed)
    synth_s = time.perf_counter() - t
    checkpoint = args.checkpoint
    if checkpoint is None:
        from chextriev.training.quick import synthetic_records, train_tiny_checkpoint

        checkpoint = train_tiny_checkpoint(synthetic_records(work / "train-images", n=16),
                                           work / "train", variant="v6")
    embedder = ModelEmbedder(checkpoint, device=args.device, batch_size=args.batch_size)
    summary = run_index(work / "archive", embedder=embedder, index_dir=work / "index",
                        workers=args.workers, batch_size=args.batch_size,
                        index_type=args.index_type, device=embedder.device, progress=True)
    print(f"machine: {machine_line()}, device {embedder.device}, workers {args.workers}, "
          f"batch {args.batch_size}, checkpoint {checkpoint} ({embedder.loaded.config.backbone}, "
          f"{embedder.image_size} px, D={embedder.embedding_dim})")
    print(f"archive: {n_files} files at {args.size}x{args.size} (synthesised in {synth_s:.0f} s)")
    print(summary.format())
    print(f"end-to-end: {summary.indexed / summary.seconds:.1f} images/s "
          f"({summary.indexed + summary.skipped + summary.failed} files in {summary.seconds:.1f} s)")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
