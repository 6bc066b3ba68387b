"""CAM, Grad-CAM, Grad-CAM++, PCAM and HAM side by side: box accuracy and TIoU/TIoR on the synthetic
lesions and on the 12 real NIH boxes.

    python -m benchmarks compare_localization --data runs/synth --out results/localization \\
        [--seeds 0,1,2] [--nih ../shared/data/nih-sample] [--work runs/localization] [--threads 2]

For each seed, on the same synthetic archive and the same frozen random ResNet18 at 256 px
(the ``synthetic-small`` presets; no pretrained weights exist here):

* ``resnet50`` (the global classifier baseline of ``chextriev train``; under this preset its
  trunk is the ResNet18): CAM, Grad-CAM, Grad-CAM++ of its classifier (the standard
  weakly-supervised setting);
* ``resnet50-pcam`` (the same classifier trained with ``--pooling pcam``, Ye et al. 2020): its
  own probability map of each class (``--cam-method pcam``);
* ``v6`` (the project's retrieval model, whose Grad-CAM the server shows): the same three;
* ``ham`` (labels only, ``chextriev train-ham --box-fraction 0``): HAM's heatmap (class map
  gated by its abnormality attention), the class map alone (what the published test code
  thresholds), and CAM / Grad-CAM / Grad-CAM++ of HAM's own classifier;
* ``ham+boxes`` (``--box-fraction``, default 0.2 of the training images with their lesion
  boxes): HAM's two heatmaps.

Every heatmap is scored by :func:`metrics.localization_eval.evaluate_localization` on the test
images with lesions (box accuracy IoU / IoBB at T = 0.1..0.7 after ``heatmap_to_boxes`` at half
the maximum; TIoU / TIoR of the half-maximum mask against the drawn lesion masks) and on the
NIH sample's 12 boxed images (box accuracy, and TIoU / TIoR against the boxes filled in as
masks, as HAM's published evaluation scores box annotations). Checkpoints go under ``--work``
and are reused on a rerun (a model counts as trained once its ``train_seconds.txt`` is
written, so a checkpoint left by a killed run is trained again); ``results.json`` holds every
seed's figures and is written after each seed (a rerun skips the seeds it holds, and adds the
NIH TIoU / TIoR to seeds stored without them, and scores the rows a stored seed lacks, training
only the models those rows need: how the PCAM row joined the seeds scored before it);
``results.md`` has the tables (mean and sd over the seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import REPO_ROOT, machine_line

log = logging.getLogger("compare_localization")

#: (row name, model key, method, HAM combine) in table order
ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("CAM (resnet50 classifier)", "resnet50", "cam", None),
    ("Grad-CAM (resnet50 classifier)", "resnet50", "gradcam", None),
    ("Grad-CAM++ (resnet50 classifier)", "resnet50", "gradcampp", None),
    ("HAM (labels only)", "ham", "ham", "attention"),
    ("HAM + boxes", "ham+boxes", "ham", "attention"),
    ("PCAM (resnet50 classifier, pcam pooling)", "resnet50-pcam", "pcam", None),
    ("CAM (v6)", "v6", "cam", None),
    ("Grad-CAM (v6)", "v6", "gradcam", None),
    ("Grad-CAM++ (v6)", "v6", "gradcampp", None),
    ("CAM (HAM network)", "ham", "cam", None),
    ("Grad-CAM (HAM network)", "ham", "gradcam", None),
    ("Grad-CAM++ (HAM network)", "ham", "gradcampp", None),
    ("HAM class map only (labels only)", "ham", "ham", "class"),
    ("HAM class map only (+ boxes)", "ham+boxes", "ham", "class"),
)
MAIN_ROWS = 6  # the five methods side by side (HAM with and without boxes)
#: the classifiers trained with ``chextriev train`` (variant, config overrides); the others are HAM networks
CLASSIFIERS: dict[str, tuple[str, dict]] = {"resnet50": ("resnet50", {}), "resnet50-pcam": ("resnet50", {"pooling": "pcam"}),
                                            "v6": ("v6", {})}
MODELS = (*CLASSIFIERS, "ham", "ham+boxes")
SHOWN_T = (0.1, 0.3, 0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="synthetic archive (chextriev synth)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "localization")
    p.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "localization", help="checkpoints (reused)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--nih", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "nih-sample",
                   help="NIH sample with BBox_List (skipped with a note when absent)")
    p.add_argument("--box-fraction", type=float, default=0.2, help="training images with boxes for ham+boxes")
    p.add_argument("--preset", default="synthetic-small",
                   help="training preset of every model (tiny: a smoke run in seconds)")
    p.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    p.add_argument("--max-images", type=int, default=None, help="score at most this many test images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def train_models(records, work: Path, seed: int, box_fraction: float, store: dict, progress: bool,
                 archive: Path, preset: str = "synthetic-small", epochs: int | None = None,
                 keys: tuple[str, ...] = MODELS) -> tuple[dict[str, Path], dict[str, float | None]]:
    """Train (or reuse) the models ``keys`` (default all five) of one seed; returns their
    checkpoints and training seconds. A model counts as trained once its ``train_seconds.txt``
    is written (after the training returns), so a checkpoint left by a killed run is trained
    again, not reused."""
    from chextriev.localization.cli import synthetic_box_truth
    from chextriev.localization.ham_training import train_ham
    from chextriev.training.fit import train_records

    paths: dict[str, Path] = {}
    seconds: dict[str, float | None] = {}

    def timed(name: str, run: Path, checkpoint: str, train) -> None:
        stamp = run / "train_seconds.txt"  # written when training has finished: a killed run retrains
        if not (run / checkpoint).is_file() or not stamp.is_file():
            if (run / checkpoint).is_file():
                log.info("seed %d: %s has a checkpoint but no finished training (killed?): training again",
                         seed, name)
            log.info("seed %d: training %s", seed, name)
            started = time.monotonic()
            train()
            stamp.write_text(f"{time.monotonic() - started:.1f}\n")
        paths[name] = run / checkpoint
        seconds[name] = float(stamp.read_text())

    for key, (variant, overrides) in CLASSIFIERS.items():
        if key not in keys:
            continue
        run = work / f"seed{seed}" / key
        timed(key, run, "best.ckpt", partial(
            train_records, records, run, variant=variant, preset=preset, seed=seed, max_epochs=epochs,
            cache_dir=work / "feature-cache", progress=progress, model_overrides=overrides))
    truth = synthetic_box_truth(archive)
    for name, fraction in (("ham", 0.0), ("ham+boxes", box_fraction)):
        if name not in keys:
            continue
        run = work / f"seed{seed}" / name.replace("+", "-")
        timed(name, run, "best.pt", partial(
            train_ham, records, run, preset=preset, seed=seed, epochs=epochs, box_truth=truth,
            box_fraction=fraction, feature_store=store, progress=progress))
    return paths, seconds


def classification_auroc(model: Any, records) -> float | None:
    """Mean AUROC of a model's image-level probabilities on ``records`` (context for the maps)."""
    from chextriev.io.images import load_image
    from chextriev.localization.ham import LoadedHAM, ham_maps
    from metrics.classification import per_class_auroc

    labels = np.stack([r.labels for r in records])
    if isinstance(model, LoadedHAM):
        probs = np.stack([ham_maps(model, load_image(r.source))[1] for r in records])
    else:
        from metrics.model_eval import embed_records

        probs = embed_records(model, records).probabilities
    return per_class_auroc(labels, probs)["mean"]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures kept per (row, seed, dataset)."""
    boxes, pixels = result["boxes"], result.get("pixels")
    out = {"n_cases": boxes["n_cases"], "iou": boxes["iou"], "iobb": boxes["iobb"],
           "mean_iou": boxes["mean_iou"], "per_finding_iou": {f: v["iou"] for f, v in boxes["per_finding"].items()},
           "unmapped_findings": result["unmapped_findings"]}
    if pixels:
        out.update({"TIoU": pixels["TIoU"], "TIoR": pixels["TIoR"], "mean_pixel_iou": pixels["mean_iou"]})
    return out


def load_models(paths: dict[str, Path]) -> dict[str, Any]:
    """The trained models of one seed: HAM networks and retrieval / classifier checkpoints."""
    from chextriev.checkpoint import load_checkpoint
    from chextriev.localization import load_ham

    return {k: (load_ham(p) if k.startswith("ham") else load_checkpoint(p)) for k, p in paths.items()}


def explained(models: dict[str, Any], key: str, method: str) -> Any:
    """What a row's heatmap method runs on (HAM's own classifier for CAM methods of a HAM network)."""
    model = models[key]
    if key.startswith("ham") and method != "ham":
        return model.model.cam_pipeline()
    return model


def evaluate_seed(paths: dict[str, Path], test, nih, archive: Path, max_images: int | None,
                  rows=ROWS) -> dict[str, Any]:
    """Score ``rows`` (default all) with the models ``paths``; AUROC of every model."""
    from metrics.localization_eval import evaluate_localization, synthetic_truth

    models = load_models(paths)
    truth = synthetic_truth(archive)
    out: dict[str, Any] = {"auroc": {k: classification_auroc(m, test) for k, m in models.items()}, "rows": {}}
    for name, key, method, combine in rows:
        model = explained(models, key, method)
        started = time.monotonic()
        row = {"synthetic": summary(evaluate_localization(model, test, truth, method=method, max_images=max_images,
                                                          ham_combine=combine))}
        if nih:
            row["nih"] = nih_summary(model, nih, method, combine)
        row["seconds"] = round(time.monotonic() - started, 1)
        out["rows"][name] = row
        log.info("%s: synthetic IoU@0.3 %.3f, IoBB@0.3 %.3f, TIoU@0.3 %.3f", name,
                 row["synthetic"]["iou"][0.3], row["synthetic"]["iobb"][0.3], row["synthetic"].get("TIoU", {}).get(0.3, 0))
    return out


def nih_summary(model: Any, nih, method: str, combine: str | None) -> dict[str, Any]:
    """Box accuracy and TIoU/TIoR (the boxes filled in as masks, as HAM evaluates) on the NIH boxes."""
    from metrics.localization_eval import evaluate_localization, lesion_box_truth

    return summary(evaluate_localization(model, nih, lesion_box_truth, method=method, max_images=None,
                                         ham_combine=combine, box_masks=True))


def add_nih_pixels(paths: dict[str, Path], seed_result: dict[str, Any], nih) -> None:
    """Rows of a stored seed scored before the NIH boxes had TIoU/TIoR: score the NIH sample
    again (box accuracy and TIoU/TIoR; the box figures must come out as stored)."""
    models = load_models(paths)
    for name, key, method, combine in ROWS:
        row = seed_result["rows"][name]
        if "TIoU" in row.get("nih", {}):
            continue
        fresh = nih_summary(explained(models, key, method), nih, method, combine)
        old = row.get("nih")
        if old and [_at(old["iou"], t) for t in SHOWN_T] != [_at(fresh["iou"], t) for t in SHOWN_T]:
            raise RuntimeError(f"{name}: NIH box accuracy differs from the stored figures: {old['iou']} vs "
                               f"{fresh['iou']} (checkpoints changed?)")
        row["nih"] = fresh
        log.info("%s: NIH TIoU@0.3 %.3f, TIoR@0.3 %.3f (boxes as masks)", name, _at(fresh["TIoU"], 0.3),
                 _at(fresh["TIoR"], 0.3))


def _at(by_threshold: dict, t: float) -> float | None:
    """The value at threshold ``t`` (keys are floats in memory, strings once read back from JSON)."""
    return by_threshold.get(t, by_threshold.get(str(t)))


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else 0.0


def _cell(values: list[float | None]) -> str:
    mean, sd = _stat(values)
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {sd:.3f}"


def tables(results: dict[str, Any], seeds: list[int]) -> str:
    """Markdown tables: synthetic (box and pixel), NIH (box), AUROC, over the seeds."""
    per_seed = [results["seeds"][str(s)] for s in seeds]
    lines = []

    def block(title: str, dataset: str, measures: list[tuple[str, str]], rows) -> None:
        heads = [f"{label} T={t}" for label, _ in measures for t in SHOWN_T]
        lines.extend([f"### {title}", "", "| method | " + " | ".join(heads) + " |",
                      "|---|" + "---|" * len(heads)])
        for name, *_ in rows:
            cells = []
            for _, key in measures:
                for t in SHOWN_T:
                    cells.append(_cell([_at(s["rows"][name][dataset].get(key, {}), t) if dataset in s["rows"][name]
                                        else None for s in per_seed]))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    n_syn = per_seed[0]["rows"][ROWS[0][0]]["synthetic"]["n_cases"]
    block(f"Synthetic test lesions ({n_syn} (image, finding) cases per seed): box accuracy",
          "synthetic", [("IoU", "iou"), ("IoBB", "iobb")], ROWS)
    block("Synthetic test lesions: pixel masks (HAM's TIoU / TIoR)", "synthetic", [("TIoU", "TIoU"), ("TIoR", "TIoR")],
          ROWS)
    if "nih" in per_seed[0]["rows"][ROWS[0][0]]:
        nih = per_seed[0]["rows"][ROWS[0][0]]["nih"]
        block(f"NIH sample, 12 real boxed images ({nih['n_cases']} scored (image, finding) cases; "
              f"not scored, no model class: {', '.join(nih['unmapped_findings']) or 'none'})",
              "nih", [("IoU", "iou"), ("IoBB", "iobb")], ROWS)
        block("NIH sample: TIoU / TIoR against the boxes filled in as masks (HAM's published evaluation)",
              "nih", [("TIoU", "TIoU"), ("TIoR", "TIoR")], ROWS)
    lines.extend([("### Each network: classification AUROC on the synthetic test images (mean over classes) "
                   "and training time"), "", "| network | AUROC | training s (trunk features included) |", "|---|---|---|"])
    for key in per_seed[0]["auroc"]:
        times = [(s.get("train_seconds") or {}).get(key) for s in per_seed]
        lines.append(f"| {key} | {_cell([s['auroc'][key] for s in per_seed])} | {_cell(times)} |")
    lines.extend(["", ("Training seconds include computing the frozen trunk's features where no cache held them "
                       "yet (the first seed of resnet50 and v6, whose feature cache is on disk; the first HAM run "
                       "of each process, whose cache is in memory), on a shared machine.")])
    return "\n".join(lines) + "\n"


def note_added(results: dict[str, Any], rows: list[str], seed: int, argv: list[str] | None) -> None:
    """Record in ``results["setup"]["added"]`` that this run scored ``rows`` for ``seed`` (one
    entry per run and set of rows; the seeds accumulate)."""
    command = "python -m benchmarks compare_localization " + " ".join(argv if argv is not None else sys.argv[1:])
    added = results["setup"].setdefault("added", [])
    if added and added[-1]["rows"] == rows and added[-1]["command"] == command:
        added[-1]["seeds"].append(seed)
        return
    added.append({"rows": rows, "seeds": [seed], "date": date.today().isoformat(), "command": command,
                  "machine": f"{machine_line()} (shared machine)"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from chextriev.io.datasets import load_records
    from chextriev.io.nih import read_nih
    from chextriev.synth.archive import load_lesions

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    records = load_records(args.data)
    test = [r for r in records if r.split == "test" and load_lesions(args.data, r.image_id)]
    nih = []
    if (args.nih / "images").is_dir():
        nih = [r for r in read_nih(args.nih, "imagenome", progress=False) if r.meta["lesion_boxes"]]
    else:
        log.warning("no NIH sample at %s: the real-box table is left out", args.nih)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "results.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {"seeds": {}}
    store: dict = {}
    for seed in seeds:
        if str(seed) in results["seeds"]:
            log.info("seed %d: reusing its rows in %s", seed, result_path)
            stored = results["seeds"][str(seed)]
            missing = [row for row in ROWS if row[0] not in stored["rows"]]
            if missing:  # rows added since the seed was scored (e.g. PCAM): train what they need, score them
                keys = tuple(dict.fromkeys(key for _, key, _, _ in missing))
                log.info("seed %d: scoring the rows it lacks: %s", seed, ", ".join(row[0] for row in missing))
                paths, seconds = train_models(records, args.work, seed, args.box_fraction, store,
                                              not args.no_progress, args.data, args.preset, args.epochs, keys=keys)
                added = evaluate_seed(paths, test, nih, args.data, args.max_images, rows=missing)
                stored["rows"].update(added["rows"])
                stored["auroc"].update(added["auroc"])
                stored.setdefault("train_seconds", {}).update(seconds)
                note_added(results, [row[0] for row in missing], seed, argv)
                result_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
            if nih and any("TIoU" not in row.get("nih", {}) for row in stored["rows"].values()):
                log.info("seed %d: scoring TIoU/TIoR on the NIH boxes (stored before they had them)", seed)
                paths, _ = train_models(records, args.work, seed, args.box_fraction, store, not args.no_progress,
                                        args.data, args.preset, args.epochs)  # all trained: nothing runs
                add_nih_pixels(paths, stored, nih)
                result_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
            continue
        started = time.monotonic()
        paths, seconds = train_models(records, args.work, seed, args.box_fraction, store, not args.no_progress,
                                      args.data, args.preset, args.epochs)
        trained = time.monotonic() - started
        seed_result = evaluate_seed(paths, test, nih, args.data, args.max_images)
        seed_result["train_seconds"] = seconds
        seed_result["eval_seconds"] = round(time.monotonic() - started - trained, 1)
        results["seeds"][str(seed)] = seed_result
        results["setup"] = {
            "command": "python -m benchmarks compare_localization " + " ".join(argv if argv is not None else sys.argv[1:]),
            "data": str(args.data), "n_test_images": len(test), "n_nih_images": len(nih),
            "box_fraction": args.box_fraction, "date": date.today().isoformat(),
            "machine": f"{machine_line()} (shared machine)",
        }
        result_path.write_text(json.dumps(results, indent=1, default=float) + "\n")  # a crash keeps finished seeds
    done = [s for s in seeds if str(s) in results["seeds"]]
    text = ["# Localization: CAM, Grad-CAM, Grad-CAM++, PCAM and HAM", "",
            (f"Command: `{results['setup']['command']}` ({results['setup']['date']}; "
             f"{results['setup']['machine']}). Seeds {', '.join(map(str, done))}: mean ± sd over the seeds."), ""]
    for entry in results["setup"].get("added", []):
        text += [(f"Rows added later ({', '.join(entry['rows'])}; seeds {', '.join(map(str, entry['seeds']))}; "
                  f"the other rows as stored): `{entry['command']}` ({entry['date']}; {entry.get('machine', '')})."), ""]
    text.append(tables(results, done))
    (args.out / "results.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
