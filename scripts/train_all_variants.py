#!/usr/bin/env python
"""Train every variant and baseline on one archive and write one results table.

    .venv/bin/python scripts/train_all_variants.py --data ARCHIVE --out RESULTS_DIR \
        [--preset synthetic-small] [--variants v6,resnet50] [--max-epochs N] [--cache-dir DIR]

For each variant: ``chextriev.training.fit.train_records`` (best checkpoint on validation
mAP@10), then the test split (held-out patients) is embedded with THE embedding function
(``chextriev.embedding.embed_images`` on ``load_checkpoint(best.ckpt)``) and scored with
``metrics``: mAP/mHR/mRR at 3, 5, 10 (SPEC protocol, skip=False, class average) and mean
AUROC of the image-level probabilities. An ``untrained`` row embeds with a V6 model at its
initialisation (same frozen backbone). Writes ``RESULTS_DIR/results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from chextriev.checkpoint import LoadedModel, load_checkpoint
from chextriev.embedding import embed_images
from chextriev.io.datasets import load_records
from chextriev.io.images import load_image
from chextriev.model.adjacency import cooccurrence_adjacency
from chextriev.model.config import VARIANTS, build_from_config
from chextriev.training.data import RetrievalDataModule, split_records
from chextriev.training.feature_cache import FeatureCache
from chextriev.training.fit import fit_feature_stats, resolve_config, train_records
from chextriev.training.presets import get_preset
from chextriev.training.retrieval_map import nearest
from metrics.classification import per_class_auroc
from metrics.retrieval import retrieval_metrics_at

log = logging.getLogger("train_all_variants")
KS = (3, 5, 10)
ORDER = ("untrained", "v6", "resnet50", "v0-image", "v0-anatomy", "v1", "v2", "v3", "v4", "v5", "anaxnet",
         "resnet50-projected", "ath", "ath-binary")


def evaluate(loaded: LoadedModel, test_records, images) -> dict:
    batch = embed_images(loaded, images, [r.boxes for r in test_records])
    labels = np.stack([r.labels for r in test_records]).astype(np.float32)
    neighbors = nearest(batch.embeddings, max(KS))
    retrieval = retrieval_metrics_at(neighbors, labels, KS, skip=False)
    row = {f"{m}@{k}": retrieval[k]["class_average"][m] for k in KS for m in ("mAP", "mHR", "mRR")}
    row["AUROC"] = per_class_auroc(labels, batch.probabilities, loaded.class_names)["mean"]
    return row


def untrained_model(records, preset: str, seed: int, cache: Path) -> LoadedModel:
    """V6 at its initialisation, with the same (fitted, not learned) feature standardisation."""
    from chextriev.anatomy.atlas import Atlas

    splits = split_records(records, seed=seed)
    atlas = Atlas.fit(splits["train"])
    config = resolve_config("v6", get_preset(preset).model, records[0].class_names,
                            cooccurrence_adjacency(r.region_labels for r in splits["train"]))
    torch.manual_seed(seed)
    model = build_from_config(config)
    fit_feature_stats(model, RetrievalDataModule({"train": splits["train"]}, model, atlas, cache=FeatureCache(cache)))
    return LoadedModel.from_model(model, atlas=atlas, variant="untrained")


def markdown(rows: dict[str, dict], meta: dict) -> str:
    header = ["model"] + [f"k={k} mAP/mHR/mRR" for k in KS] + ["AUROC", "train s"]
    lines = [(f"Test split (held-out patients): {meta['test_images']} images; preset `{meta['preset']}`; "
             f"archive `{meta['data']}`; class average, skip=False."), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in [n for n in ORDER if n in rows] + [n for n in rows if n not in ORDER]:
        r = rows[name]
        cells = [f"{r[f'mAP@{k}']:.3f}/{r[f'mHR@{k}']:.3f}/{r[f'mRR@{k}']:.3f}" for k in KS]
        auroc = "n/a" if r["AUROC"] is None else f"{r['AUROC']:.3f}"
        lines.append("| " + " | ".join([name, *cells, auroc, f"{r.get('train_seconds', 0):.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="synthetic-small")
    parser.add_argument("--variants", default=",".join(v for v in ORDER if v != "untrained"))
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is much faster on a CPU shared with other jobs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    records = load_records(args.data)
    test = split_records(records, seed=args.seed)["test"]
    images = [load_image(r.source) for r in test]
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or args.out / "feature-cache"
    rows: dict[str, dict] = {"untrained": evaluate(untrained_model(records, args.preset, args.seed, cache), test, images)}
    for name in variants:
        start = time.perf_counter()
        result = train_records(records, args.out / name, variant=name, preset=args.preset, max_epochs=args.max_epochs,
                               seed=args.seed, cache_dir=cache, progress=False)
        seconds = time.perf_counter() - start
        rows[name] = {**evaluate(load_checkpoint(result.best), test, images), "train_seconds": seconds,
                      "val_mAP@10": result.best_score}
        log.info("%s: test mAP@10 %.3f, AUROC %s (%.0f s)", name, rows[name]["mAP@10"], rows[name]["AUROC"], seconds)
        (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=2))
    meta = {"preset": args.preset, "data": str(args.data), "test_images": len(test), "seed": args.seed}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
