"""Embedding speed, two comparisons, each A/B in one run (alternated batch by batch):

``--compare mode`` (default): region features, images/s of ``roi`` (one ResNet50 pass +
RoIAlign) vs ``crop`` (18 ResNet50 passes on 224x224 crops, the published method), same ResNet50
weights, 512x512 synthetic radiographs from ``chextriev synth``.

    .venv/bin/python -m benchmarks embed --images 8

Prints images/s of both modes and the ratio (target: roi >= 3x crop on a CPU).

``--compare precision``: the whole ``embed_images`` of the default architecture (V6, ResNet50
roi at 512 px, width 1024; random weights with a fitted feature standardisation, or
``--checkpoint``) in fp32 and in bf16 (``chextriev.precision``), over a synthetic archive
(``--archive DIR``, drawn there with ``--patients`` when absent; the demo's size is 600):
images/s at ``--batch``, the batch-1 latency of ``--latency-images`` images, and the accuracy of
bf16 against fp32 (per-image cosine, retrieval top-10 overlap over the whole archive).

    .venv/bin/python -m benchmarks embed --compare precision --archive /tmp/demo-archive \
        --patients 600 --batch 16
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import (
    archive_images,
    default_checkpoint,
    machine_line,
    synth_archive,
    top_k_overlap,
)


def synthetic_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` images ``(size, size)`` from a small synthetic archive."""
    from chextriev.io.images import load_image
    from chextriev.synth.cli import register

    out = Path(tempfile.mkdtemp(prefix="bench-embed-")) / "archive"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(out), "--patients", str(max(1, n // 2)),
                              "--seed", str(seed), "--size", str(size)])
    args.func(args)
    paths = sorted((out / "files").rglob("*.png")) + sorted((out / "files").rglob("*.dcm"))
    images = [load_image(p) for p in paths]
    shutil.rmtree(out.parent, ignore_errors=True)
    while len(images) < n:
        images += images
    return images[:n]


def build(mode: str, size: int):
    from chextriev.model.config import ModelConfig
    from chextriev.model.region_features import RegionFeatures

    config = ModelConfig(feature_mode=mode, backbone="resnet50", image_size=size)
    return RegionFeatures(config).eval()


def time_modes(images: list[np.ndarray], boxes: np.ndarray, batch: int) -> dict[str, float]:
    """images/s per mode; the modes alternate batch by batch so machine load hits both alike."""
    size = images[0].shape[0]
    models = {mode: build(mode, size) for mode in ("roi", "crop")}
    trunk = {k: v for k, v in models["roi"].trunk.state_dict().items()}
    for key, value in models["crop"].trunk.state_dict().items():
        assert torch.equal(value, trunk[key]), "the two modes must share the backbone weights"
    x = torch.from_numpy(np.stack(images))[:, None]
    b = torch.from_numpy(np.repeat(boxes[None], len(images), axis=0))
    elapsed = dict.fromkeys(models, 0.0)
    with torch.inference_mode():
        for model in models.values():
            model(x[:1], b[:1])  # warm-up
        for i in range(0, len(images), batch):
            for mode, model in models.items():
                start = time.perf_counter()
                nodes, _ = model(x[i:i + batch], b[i:i + batch])
                elapsed[mode] += time.perf_counter() - start
                assert nodes.shape[1] == 18
    return {mode: len(images) / seconds for mode, seconds in elapsed.items()}


def compare_precision(args: argparse.Namespace) -> None:
    """fp32 vs bf16 ``embed_images``: throughput, batch-1 latency, accuracy (see the docstring)."""
    import statistics

    from chextriev.checkpoint import load_checkpoint
    from chextriev.embedding import embed_images

    if args.threads:
        torch.set_num_threads(args.threads)
    archive = synth_archive(args.archive, args.patients, size=args.size, seed=args.seed)
    images, boxes, _ = archive_images(archive, args.max_images)
    checkpoint = args.checkpoint or default_checkpoint(archive.parent / f"{archive.name}-v6-default.ckpt",
                                                       images[:64], boxes[:64])
    loaded = {p: load_checkpoint(checkpoint, precision=p) for p in ("fp32", "bf16")}
    given = None if args.detector_boxes else boxes
    parts = {p: [] for p in loaded}
    elapsed = dict.fromkeys(loaded, 0.0)
    for p, model in loaded.items():  # warm-up
        embed_images(model, images[:1], None if given is None else given[:1])
    for start in range(0, len(images), args.batch):
        chunk = images[start:start + args.batch]
        chunk_boxes = None if given is None else given[start:start + args.batch]
        for p, model in loaded.items():
            t = time.perf_counter()
            parts[p].append(embed_images(model, chunk, chunk_boxes, batch_size=args.batch).embeddings)
            elapsed[p] += time.perf_counter() - t
    latency = {p: [] for p in loaded}
    for i in range(min(args.latency_images, len(images))):
        for p, model in loaded.items():
            t = time.perf_counter()
            embed_images(model, images[i:i + 1], None if given is None else given[i:i + 1])
            latency[p].append((time.perf_counter() - t) * 1000)
    fp32, bf16 = (np.concatenate(parts[p]) for p in ("fp32", "bf16"))
    cosine = np.sum(fp32 * bf16, axis=1)
    rate = {p: len(images) / elapsed[p] for p in loaded}
    median = {p: statistics.median(latency[p]) for p in loaded}
    print(f"machine: {machine_line()}")
    print(f"archive: {archive} ({len(images)} images at {args.size} px); checkpoint {checkpoint}; "
          f"boxes {'detector/atlas' if given is None else 'given (true)'}")
    print(f"| precision | images/s (batch {args.batch}) | batch-1 latency, median ms "
          f"({len(latency['fp32'])} images) |")
    print("|---|---|---|")
    for p in loaded:
        print(f"| {p} | {rate[p]:.2f} | {median[p]:.1f} |")
    print(f"bf16 / fp32: throughput {rate['bf16'] / rate['fp32']:.2f}x, latency "
          f"{median['fp32'] / median['bf16']:.2f}x faster")
    print(f"accuracy of bf16 vs fp32 over {len(images)} images: cosine min {cosine.min():.6f}, "
          f"1st percentile {np.percentile(cosine, 1):.6f}, mean {cosine.mean():.6f}; "
          f"top-10 overlap {top_k_overlap(fp32, bf16, 10):.4f} (targets: cosine >= 0.999, overlap >= 0.95)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=("mode", "precision"), default="mode")
    parser.add_argument("--images", type=int, default=8, help="mode: number of images")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    precision = parser.add_argument_group("--compare precision")
    precision.add_argument("--archive", type=Path, default=Path(tempfile.gettempdir()) / "bench-embed-archive",
                           help="synthetic archive folder (drawn there when absent)")
    precision.add_argument("--patients", type=int, default=600, help="patients when drawing (default 600)")
    precision.add_argument("--max-images", type=int, default=None, help="embed at most this many images")
    precision.add_argument("--checkpoint", type=Path, default=None,
                           help="checkpoint (default: the default architecture with random weights)")
    precision.add_argument("--latency-images", type=int, default=20)
    precision.add_argument("--detector-boxes", action="store_true",
                           help="boxes from the checkpoint's provider instead of the archive's true boxes")
    precision.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    args = parser.parse_args(argv)
    if args.compare == "precision":
        compare_precision(args)
        return 0
    from chextriev.anatomy.atlas import default_template

    images = synthetic_images(args.images, args.size, args.seed)
    boxes = (default_template() * args.size).astype(np.float32)
    rates = time_modes(images, boxes, args.batch)
    roi, crop = rates["roi"], rates["crop"]
    print(f"machine: {machine_line()}, {args.images} images {args.size}x{args.size}, ResNet50 "
          "(random init, same weights in both modes)")
    print(f"roi : {roi:7.3f} images/s")
    print(f"crop: {crop:7.3f} images/s")
    print(f"ratio roi/crop: {roi / crop:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
