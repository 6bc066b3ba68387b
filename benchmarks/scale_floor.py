#!/usr/bin/env python
"""The feature standardisation's scale floor: bf16 accuracy and trained retrieval quality, A/B.

``chextriev.model.region_features.feature_scale`` floors each channel's scale at 1e-3 (absolute,
the rule in use) or, with ``relative=f``, at ``f`` times the median channel std (issue 15).
This script compares the rules (``abs-1e-3`` and each ``--fractions`` value):

``--part precision``: the default architecture (V6, ResNet50 roi at 512 px, random-init frozen
backbone; ``benchmarks.harness.default_checkpoint``'s model), standardisation fitted on the first
``--fit-images`` archive images, bf16 against fp32 embeddings of the next ``--eval-images``
held-out images, per rule: cosine min / 1st percentile / mean and top-10 overlap, and how many
channels the rule floors. The backbone runs once per precision; each rule then re-runs the
rest of ``embed_images`` (``chextriev.embedding.embed_features`` under the same autocast).

``--part quality``: retrieval quality in fp32 of trained models: for each seed and rule,
``chextriev.training.fit.train_records`` (V6, ``--preset``) and the test split scored as
the variant sweep does (``metrics.model_eval.headline_scores``: mAP@10, AUROC; validation mAP@10 of
the best epoch).
The rule is switched by replacing ``region_features.feature_scale`` for the run (the function
``set_feature_stats`` calls, i.e. every place that fits the statistics).

    .venv/bin/python -m benchmarks scale_floor --archive /tmp/demo-archive --part precision
    .venv/bin/python -m benchmarks scale_floor --archive /tmp/demo-archive --part quality \
        --seeds 0,1,2 --out /tmp/floor-ab --cache-dir /tmp/floor-cache --threads 1
    # the default architecture's backbone and input side under the same CPU preset:
    .venv/bin/python -m benchmarks scale_floor --archive /tmp/demo-archive --part quality \
        --backbone resnet50 --image-size 512 --out /tmp/floor-ab-r50 --cache-dir /tmp/floor-cache
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import archive_images, feature_rows, machine_line, top_k_overlap
from chextriev.model import region_features

log = logging.getLogger("bench_scale_floor")
OLD = "abs-1e-3"
_RULE = region_features.feature_scale


def rule_scale(rule: str):
    """``std -> scale`` of one rule: ``abs-1e-3`` (before) or a fraction of the median std."""
    if rule == OLD:
        return _RULE
    fraction = float(rule)
    return lambda std: _RULE(std, relative=fraction)


@contextlib.contextmanager
def fitted_with(rule: str):
    """Every ``set_feature_stats`` inside uses ``rule``."""
    region_features.feature_scale = rule_scale(rule)
    try:
        yield
    finally:
        region_features.feature_scale = _RULE


def precision_part(args, rules: list[str]) -> None:
    from chextriev.embedding import embed_features
    from chextriev.model.build import build_from_config
    from chextriev.model.config import get_config
    from chextriev.model.tensors import box_mask
    from chextriev.precision import autocast, prepare_model

    images, boxes, _ = archive_images(args.archive, args.fit_images + args.eval_images)
    fit_images, fit_boxes = images[:args.fit_images], boxes[:args.fit_images]
    test_images, test_boxes = images[args.fit_images:], boxes[args.fit_images:]
    config = get_config("v6")
    torch.manual_seed(args.seed)
    fp32 = build_from_config(config).eval()
    bf16 = prepare_model(copy.deepcopy(fp32), "bf16")
    start = time.perf_counter()
    rows = feature_rows(fp32, fit_images, fit_boxes)
    mean, std = rows.mean(dim=0), rows.std(dim=0)
    features = {"fp32": [], "bf16": []}
    masks = []
    with torch.inference_mode():
        for s in range(0, len(test_images), args.batch):
            x, b = fp32.prepare_batch(test_images[s:s + args.batch], test_boxes[s:s + args.batch])
            masks.append(box_mask(b))
            for name, model in (("fp32", fp32), ("bf16", bf16)):
                with autocast(name, "cpu"):
                    features[name].append(model.extract(x, b))
    log.info("backbone passes: %.0f s", time.perf_counter() - start)
    positive = std[std > 0]
    print(f"machine: {machine_line()}")
    print(f"archive {args.archive}: fit on {len(fit_images)} images ({len(rows)} region rows), bf16 vs fp32 "
          f"on the next {len(test_images)}; V6 default architecture, seed {args.seed}")
    print(f"fitted std: {int((std == 0).sum())} of {len(std)} channels all zero, median of the rest "
          f"{float(positive.median()):.3g}, {int((std < 1e-3).sum())} below 1e-3")
    print("| rule | channels floored | cosine min | 1st percentile | mean | top-10 overlap |")
    print("|---|---|---|---|---|---|")
    for rule in rules:
        with fitted_with(rule):
            for model in (fp32, bf16):
                model.feature_module().set_feature_stats(mean, std)
        scale = fp32.feature_module().feature_scale
        embeddings = {}
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            with autocast(name, "cpu"):
                embeddings[name] = np.concatenate([embed_features(model, f, m)["embeddings"]
                                                   for f, m in zip(features[name], masks)])
        cosine = np.sum(embeddings["fp32"] * embeddings["bf16"], axis=1)
        label = "absolute 1e-3 (in use)" if rule == OLD else f"{rule} x median std"
        print(f"| {label} | {int((scale > std).sum())} | {cosine.min():.5f} | {np.percentile(cosine, 1):.5f} | "
              f"{cosine.mean():.6f} | {top_k_overlap(embeddings['fp32'], embeddings['bf16'], 10):.4f} |")


def quality_part(args, rules: list[str]) -> None:
    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.datasets import load_records
    from chextriev.training.data import split_records
    from chextriev.training.fit import train_records
    from metrics.model_eval import headline_scores

    records = [replace(record, split=name) for name, items in split_records(load_records(args.archive)).items()
               for record in items]
    test = [r for r in records if r.split == "test"]
    overrides = {k: v for k, v in (("backbone", args.backbone), ("image_size", args.image_size)) if v}
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for seed in args.seeds:
        for rule in rules:
            key = f"seed{seed}/{rule}"
            if key in results:
                log.info("%s: reusing %s", key, results_path)
                continue
            start = time.perf_counter()
            with fitted_with(rule):
                result = train_records(records, args.out / f"seed{seed}" / rule, variant="v6", preset=args.preset,
                                       seed=seed, cache_dir=args.cache_dir, progress=False,
                                       max_epochs=args.epochs, model_overrides=overrides)
            row = headline_scores(load_checkpoint(result.best), test)
            results[key] = {"val_mAP@10": result.best_score, "test_mAP@10": row["mAP@10"],
                            "test_AUROC": row["AUROC"], "region_AUROC": row["region_AUROC"],
                            "seconds": time.perf_counter() - start}
            log.info("%s: %s", key, results[key])
            results_path.write_text(json.dumps(results, indent=2))
    print(f"preset {args.preset} {overrides or ''}, V6, archive {args.archive}, {len(test)} test images, seeds {args.seeds}")
    print("| rule | val mAP@10 | test mAP@10 | test AUROC | region AUROC | per seed test mAP@10 |")
    print("|---|---|---|---|---|---|")
    for rule in rules:
        rows = [results[f"seed{s}/{rule}"] for s in args.seeds if f"seed{s}/{rule}" in results]
        if not rows:
            continue

        def avg(metric: str, rows=rows) -> str:
            values = [r[metric] for r in rows if r[metric] is not None]
            return f"{np.mean(values):.3f}" if values else "n/a"

        label = "absolute 1e-3 (in use)" if rule == OLD else f"{rule} x median std"
        per_seed = " / ".join(f"{r['test_mAP@10']:.3f}" for r in rows)
        print(f"| {label} | {avg('val_mAP@10')} | {avg('test_mAP@10')} | {avg('test_AUROC')} | "
              f"{avg('region_AUROC')} | {per_seed} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, required=True, help="a chextriev synth archive (512 px)")
    parser.add_argument("--part", choices=("precision", "quality"), required=True)
    parser.add_argument("--fractions", default="0.01,0.03,0.1", help="relative floors to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="precision: model seed")
    parser.add_argument("--fit-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seeds", default="0", help="quality: comma-separated seeds")
    parser.add_argument("--preset", default="synthetic-small")
    parser.add_argument("--epochs", type=int, default=None, help="quality: at most N epochs (default the preset's)")
    parser.add_argument("--backbone", default=None, help="quality: backbone instead of the preset's")
    parser.add_argument("--image-size", type=int, default=None, help="quality: input side instead of the preset's")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-scale-floor"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    rules = [OLD, *[f.strip() for f in args.fractions.split(",") if f.strip()]]
    (precision_part if args.part == "precision" else quality_part)(args, rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
