"""Pipeline check on real images: the 621 NIH ChestX-ray14 images of the shared sample.

Embeds them with a model trained on SYNTHETIC data, scores retrieval over the 14 NIH labels
(k = 3, 5, 10, skip on and off), next to a random embedding's scores on the same labels, and
scores Grad-CAM boxes against the 12 real NIH boxes (NIH findings mapped to the model's classes
with chextriev.vocab.NIH_TO_IMAGENOME). This checks that every stage runs on real images
(8-bit L and RGBA PNGs, real label and box files); it is NOT a quality claim: the model never
saw a real radiograph.

    .venv/bin/python -m benchmarks nih_pipeline_check [--checkpoint CKPT] [--data DIR] [--out results/nih-sample]

Without --checkpoint, a tiny v6 is trained on a small fresh synthetic archive first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.harness import REPO_ROOT
from metrics.evaluate import EvaluationInputs, EvaluationOptions, evaluate_arrays
from metrics.report import _jsonable, triple

log = logging.getLogger("nih_pipeline_check")


def default_data() -> Path:
    return Path(os.environ.get("CHEXTRIEV_NIH_SAMPLE", str(REPO_ROOT.parent / "shared" / "data" / "nih-sample")))


def tiny_synthetic_checkpoint(work: Path) -> Path:
    """Train a tiny v6 on a fresh 24-patient synthetic archive (minutes on CPU)."""
    from chextriev.synth.cli import register
    from chextriev.training.quick import train_tiny_checkpoint

    archive = work / "synthetic"
    if not (archive / "manifest.csv").is_file():
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["synth", "--out", str(archive), "--patients", "24", "--seed", "0", "--size", "128"])
        args.func(args)
    return train_tiny_checkpoint(archive, work / "run", "v6", max_epochs=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "nih-sample")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "nih-pipeline-check")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.datasets import load_records
    from metrics.localization_eval import evaluate_localization, nih_truth
    from metrics.model_eval import embed_records, label_matrix

    if not (args.data / "images").is_dir():
        log.error("NIH sample not found at %s (set CHEXTRIEV_NIH_SAMPLE)", args.data)
        return 2
    ckpt = args.checkpoint or tiny_synthetic_checkpoint(args.work)
    loaded = load_checkpoint(ckpt)
    records = load_records(args.data, class_list="nih")
    labels, names = label_matrix(records)
    embedded = embed_records(loaded, records, args.batch_size)
    ids = [r.image_id for r in records]
    patients = [r.patient_id for r in records]
    rng = np.random.default_rng(0)
    random_emb = rng.normal(size=embedded.embeddings.shape).astype(np.float32)

    results = {}
    for skip in (False, True):
        opts = EvaluationOptions(ks=(3, 5, 10), skip=skip, split="all (621-image NIH sample)")
        for name, emb in (("model", embedded.embeddings), ("random", random_emb)):
            rep = evaluate_arrays(EvaluationInputs(emb, labels, list(names), ids, patients), opts)
            rep.pop("neighbors")
            results[f"{name}, skip={skip}"] = rep
    loc = evaluate_localization(loaded, records, nih_truth, boxes=list(embedded.boxes), max_images=None)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline_check.json").write_text(
        json.dumps(_jsonable({"checkpoint": str(ckpt), "retrieval": results, "localization": loc}), indent=2)
    )
    lines = [
        "# NIH sample: pipeline check on real images (not a quality claim)", "",
        (f"{len(records)} real NIH ChestX-ray14 images, 14 NIH labels; model `{loaded.variant}` "
         f"({ckpt.name}, id {loaded.checkpoint_id}) trained on SYNTHETIC data only; query excluded by id; "
         "classes without queries undefined. The random row is a Gaussian embedding of the same size."), "",
        "| embedding | k=3 | k=5 | k=10 |", "|---|---|---|---|",
    ]
    for key, rep in results.items():
        lines.append(f"| {key} | " + " | ".join(triple(rep["retrieval"][k]["class_average"]) for k in (3, 5, 10)) + " |")
    b = loc["boxes"]
    lines += ["", (f"Grad-CAM boxes vs the real NIH boxes: {b['n_cases']} (image, finding) cases scored, "
                   f"unmapped findings: {', '.join(loc['unmapped_findings']) or 'none'}."), "",
              "| measure | " + " | ".join(f"T={t}" for t in b["thresholds"]) + " |", "|---|" + "---|" * len(b["thresholds"])]
    for m in ("iou", "iobb"):
        lines.append(f"| {m} | " + " | ".join(f"{b[m][t]:.2f}" if b[m][t] is not None else "n/a" for t in b["thresholds"]) + " |")
    text = "\n".join(lines) + "\n"
    (args.out / "pipeline_check.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
