"""Region features: images/s of ``roi`` (one ResNet50 pass + RoIAlign) vs ``crop`` (18 ResNet50
passes on 224x224 crops, the published method), same ResNet50 weights, 512x512 synthetic
radiographs from ``chextriev synth``, in one run.

    .venv/bin/python scripts/bench_embed.py --images 8

Prints images/s of both modes and the ratio (target: roi >= 3x crop on a CPU).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from chextriev.anatomy.atlas import default_template

    images = synthetic_images(args.images, args.size, args.seed)
    boxes = (default_template() * args.size).astype(np.float32)
    rates = time_modes(images, boxes, args.batch)
    roi, crop = rates["roi"], rates["crop"]
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, {args.images} images {args.size}x{args.size}, ResNet50 "
          "(random init, same weights in both modes)")
    print(f"roi : {roi:7.3f} images/s")
    print(f"crop: {crop:7.3f} images/s")
    print(f"ratio roi/crop: {roi / crop:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
