#!/usr/bin/env python
"""Anatomy-supervised variants (gi = 0): image AUROC of the largest region logit (what
``RetrievalModel.image_logits`` uses) vs the shared head on the mean of the nodes (the graph
logits, what the published code classified images with), on the test split.

    .venv/bin/python -m benchmarks anatomy_image_logits --data runs/synth --runs runs/all [--seeds 0,1,2]

Reads ``RUNS/seed<S>/<variant>/best.ckpt`` as ``benchmarks/train_all_variants.py`` writes them,
embeds the test images with THE embedding path (``model.prepare_batch``, ``extract``,
``forward_features``) and prints one line per variant and seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.datasets import load_records
    from chextriev.io.images import load_image
    from chextriev.model.config import VARIANTS
    from chextriev.model.tensors import box_mask
    from chextriev.training.data import split_records
    from metrics.classification import per_class_auroc

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    test = split_records(load_records(args.data))["test"]
    images = [load_image(r.source) for r in test]
    labels = np.stack([r.labels for r in test]).astype(np.float32)
    names = [n for n, c in VARIANTS.items() if c.has_regions and c.graph_importance == 0]
    print("variant seed | AUROC largest region logit | AUROC head on the node mean")
    for name in names:
        for seed in args.seeds.split(","):
            path = args.runs / f"seed{seed}" / name / "best.ckpt"
            if not path.is_file():
                print(f"{name} {seed} | no checkpoint at {path}")
                continue
            model = load_checkpoint(path).model
            regions, graph = [], []
            with torch.inference_mode():
                for start in range(0, len(test), 16):
                    chunk = slice(start, start + 16)
                    inputs, boxes = model.prepare_batch(images[chunk], [r.boxes for r in test[chunk]])
                    output = model.forward_features(model.extract(inputs, boxes), box_mask(boxes))
                    regions.append(model.image_logits(output).numpy())
                    graph.append(output.graph_logits.numpy())
            by_region = per_class_auroc(labels, np.concatenate(regions))["mean"]
            by_mean = per_class_auroc(labels, np.concatenate(graph))["mean"]
            print(f"{name} {seed} | {by_region:.3f} | {by_mean:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
