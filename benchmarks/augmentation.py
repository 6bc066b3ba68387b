#!/usr/bin/env python
"""Test AUROC and mAP@10 with and without training augmentation, several seeds, one split.

    .venv/bin/python -m benchmarks augmentation --data ARCHIVE --out DIR \
        [--variant v6] [--preset synthetic-small] [--seeds 0,1,2] [--max-epochs N] \
        [--image-size S] [--patients 600] [--cache-dir DIR] [--threads 1] [--append BENCHMARKS.md]

For each seed, the variant is trained twice with the same preset and the same patients in each
split (the archive's split column, else one hash of the patient id): once as the preset says
(augmentation ``none``), once with ``--augment standard``
(:mod:`chextriev.training.augment`; the model then takes the centre crop at test). The two runs
of a seed alternate, so machine load affects both alike. Each ``best.ckpt`` (validation mAP@10)
embeds the held-out test patients with THE embedding function (``embed_images`` on
``load_checkpoint``) and is scored with the retrieval core (mAP@10, SPEC protocol, skip=False,
class average), the mean AUROC, and the mean F1 at the checkpoint's finding thresholds (chosen
on validation by max F1). Prints a table of means ± sd over the seeds and the per-seed
differences (augmented - plain); ``--append`` adds it to a markdown file with the command.

``--image-size`` overrides the preset's model input side (augmented training runs the frozen
backbone on every training batch, so a smaller input keeps the benchmark bounded on a CPU).
``ARCHIVE`` is drawn with ``chextriev synth`` (``--patients``) when the folder holds none. The
synthetic archive is the project's embedded default: it is not tuned here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import machine_line, synth_archive
from chextriev.checkpoint import load_checkpoint
from chextriev.embedding import embed_images
from chextriev.io.datasets import load_records
from chextriev.io.images import load_image
from chextriev.retrieval import neighbors_from_embeddings, retrieval_metrics_at
from chextriev.training.data import split_records
from chextriev.training.fit import train_records
from metrics.classification import per_class_auroc, threshold_metrics

ARMS = ("none", "standard")


def score(ckpt: Path, test_records, images) -> dict:
    loaded = load_checkpoint(ckpt, precision="fp32")
    batch = embed_images(loaded, images, [r.boxes for r in test_records])
    labels = np.stack([r.labels for r in test_records]).astype(np.float32)
    neighbors, _ = neighbors_from_embeddings(batch.embeddings, 10)
    retrieval = retrieval_metrics_at(neighbors, labels, (10,), skip=False)
    f1 = threshold_metrics(labels, batch.probabilities, loaded.finding_thresholds(), loaded.class_names)
    f1_values = [v["f1"] for v in f1.values() if v["f1"] is not None and v["support"] > 0]
    return {"mAP@10": retrieval[10]["class_average"]["mAP"],
            "AUROC": per_class_auroc(labels, batch.probabilities, loaded.class_names)["mean"],
            "F1": float(np.mean(f1_values)) if f1_values else None,
            "center_crop": loaded.config.center_crop}


def table(rows: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    lines = ["| training | mAP@10 | AUROC | F1 (val thresholds) | train s |", "|---|---|---|---|---|"]
    for arm in ARMS:
        cells = []
        for key in ("mAP@10", "AUROC", "F1", "train_s"):
            values = [rows[arm][s][key] for s in seeds if rows[arm][s].get(key) is not None]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"
                         if key != "train_s" else f"{np.mean(values):.0f}")
        lines.append(f"| augmentation {arm} | " + " | ".join(cells) + " |")
    for key in ("mAP@10", "AUROC", "F1"):
        diffs = [rows["standard"][s][key] - rows["none"][s][key] for s in seeds
                 if rows["standard"][s].get(key) is not None and rows["none"][s].get(key) is not None]
        lines.append(f"\n{key} augmented - plain per seed: " + ", ".join(f"{d:+.3f}" for d in diffs)
                     + f" (mean {np.mean(diffs):+.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", default="v6")
    parser.add_argument("--preset", default="synthetic-small")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's model input side")
    parser.add_argument("--patients", type=int, default=600, help="patients of a newly drawn archive")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    synth_archive(args.data, args.patients)
    records = load_records(args.data)
    test = split_records(records)["test"]
    images = [load_image(r.source) for r in test]
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or args.out / "feature-cache"
    rows: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            started = time.perf_counter()
            result = train_records(records, args.out / f"seed{seed}" / arm, variant=args.variant, preset=args.preset,
                                   max_epochs=args.max_epochs, seed=seed, cache_dir=cache, augment=arm,
                                   progress=False,
                                   model_overrides={"image_size": args.image_size} if args.image_size else None)
            seconds = time.perf_counter() - started
            rows[arm][seed] = {**score(result.best, test, images), "train_s": seconds,
                               "val_mAP@10": result.best_score}
            print(f"seed {seed} augmentation {arm}: {json.dumps(rows[arm][seed])}", flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    command = "python -m benchmarks augmentation " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = (f"{args.variant}, preset {args.preset}, {len(records)} images ({len(test)} test), seeds "
            f"{args.seeds}, epochs {args.max_epochs or 'preset'}, model input {args.image_size or 'preset'} px"
            f"\n\n{table(rows, seeds)}")
    print(text)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write(f"\n### Training augmentation: none vs standard ({time.strftime('%Y-%m-%d')})\n\n"
                         f"`{command}`\n\n{machine_line()}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
