#!/usr/bin/env python
"""Training throughput (images/s) of ``roi`` vs ``crop`` region features, in one run.

    .venv/bin/python -m benchmarks train [--backbone resnet50] [--batch 2] [--steps 2]
        [--image-size 512] [--crop-size 224] [--append BENCHMARKS.md]

One training step = backbone features (frozen, no cache: what a first epoch or
``--train-backbone`` costs) + projection + V6 transformer + heads + backward + Adam step,
at the published width (1024). Random images with the anatomical template boxes. The two modes
alternate step by step so that machine load affects both alike; reports the ratio.

A third row times the step on cached backbone features (``forward_features`` + backward +
Adam): what every later epoch costs with a frozen backbone and the feature cache, the same for
both modes.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.harness import machine_line
from chextriev.anatomy.atlas import default_template
from chextriev.model import build_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--append", default=None, help="append a markdown section to this file")
    parser.add_argument("--machine", default="shared with other jobs while measured",
                        help="how loaded the machine was, for the report line")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    size = args.image_size
    images = torch.rand(args.batch, 1, size, size)
    boxes = torch.from_numpy(default_template() * size).float().repeat(args.batch, 1, 1)
    labels = (torch.rand(args.batch, 9) > 0.5).float()
    region_labels = (torch.rand(args.batch, 18, 9) > 0.8).float()
    models, optimizers, times = {}, {}, {"roi": [], "crop": []}
    for mode in times:
        models[mode] = build_model("v6", backbone=args.backbone, image_size=size, crop_size=args.crop_size,
                                   feature_mode=mode).train()
        optimizers[mode] = torch.optim.Adam([p for p in models[mode].parameters() if p.requires_grad], lr=1e-4)

    with torch.no_grad():
        cached = models["roi"].extract(images, boxes)  # what the feature cache holds
    mask = ~torch.isnan(boxes).any(dim=-1)

    def step(mode: str) -> float:
        start = time.perf_counter()
        trained = "roi" if mode == "cached" else mode  # the cached step trains the roi model
        model, optimizer = models[trained], optimizers[trained]
        output = model.forward_features(cached, mask) if mode == "cached" else model(images, boxes)
        loss = model.loss(output, labels, region_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times["cached"] = []
    for mode in times:  # warm-up
        step(mode)
    for _ in range(args.steps):
        for mode, seconds in times.items():
            seconds.append(step(mode))
    rate = {mode: args.batch * len(t) / sum(t) for mode, t in times.items()}
    lines = [
        f"## Training throughput: roi vs crop region features ({time.strftime('%Y-%m-%d')})",
        "",
        (f"Command: `.venv/bin/python -m benchmarks train --backbone {args.backbone} --batch {args.batch} "
        f"--steps {args.steps} --image-size {size} --crop-size {args.crop_size}`"),
        f"Machine: {machine_line()} ({args.machine}; modes alternated step by step).",
        f"Step = frozen {args.backbone} features (no cache) + projection + V6 (width 1024) + heads + backward + Adam.",
        "",
        f"| mode | images/s | s/step (batch {args.batch}) |",
        "|---|---|---|",
    ]
    what = {"roi": f"one {size} px pass + RoIAlign", "crop": f"18 crops of {args.crop_size} px",
            "cached": "cached backbone features, either mode"}
    for mode, seconds in times.items():
        lines.append(f"| {mode} ({what[mode]}) | {rate[mode]:.3f} | {sum(seconds) / len(seconds):.2f} |")
    lines += ["", f"roi / crop throughput ratio: **{rate['roi'] / rate['crop']:.1f}x**", ""]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
