#!/usr/bin/env python
"""Train every variant and baseline on one archive, over one or more seeds; one results table.

    .venv/bin/python -m benchmarks train_all_variants --data ARCHIVE --out RESULTS_DIR \
        [--preset synthetic-small] [--variants v6,resnet50] [--seeds 0,1,2] [--epochs N] \
        [--cache-dir DIR] [--fresh]

The variants are the rows of the variant table (``chextriev.model.config.VARIANTS``, in its
order); ``--variants`` picks some. A row may also be a variant with config overrides,
``NAME:FIELD=VALUE[:FIELD=VALUE]`` (e.g. ``resnet50:pooling=pcam:attention=channel``, the global
classifier's pooling family); such a row is listed after its variant. For each seed and row:
``chextriev.training.fit.train_records`` (best checkpoint on validation mAP@10), then the test
split (held-out patients) is scored by the evaluation of ``chextriev evaluate``
(``metrics.model_eval.headline_scores`` on ``load_checkpoint(best.ckpt)``: THE embedding
function, the retrieval core): mAP/mHR/mRR at 3, 5, 10 (SPEC protocol, skip=False, class
average), the mean AUROC of the image-level probabilities, and for region models the region
AUROC (mean over (region, finding) cells of the node probabilities against the region labels). An ``untrained`` row per seed embeds with a V6
model at that seed's initialisation (same frozen backbone, same fitted feature
standardisation). ``ath-binary`` is not trained again: it is the ``ath`` run of the same seed
searched with the sign of its codes (train s ``= ath``); its ``best.ckpt`` is that run's, with
``binary`` set in the saved config (``chextriev.checkpoint.derive_checkpoint``).

The seed sets the model initialisation and the batch order; the patients of each split are the
same for every seed (the archive's split column, else one hash of the patient id), so every
seed is scored on the same test images. The table
shows the mean over seeds and, per variant, its mAP@10 minus the same seed's untrained
mAP@10: mean, standard deviation and the smallest margin over seeds.

Checkpoints go to ``RESULTS_DIR/seed<S>/<row>/`` (``:`` in a row name becomes ``+``). Writes ``RESULTS_DIR/results.md`` (the
table, headed by the command that made it) and ``results.json`` (every seed's rows; rewritten
after each variant, so a killed run keeps what it finished). A rerun with the same ``--out``
reuses the rows already in ``results.json`` for the same preset, archive, epoch limit and
model format (``--fresh`` retrains everything).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from chextriev.checkpoint import LoadedModel, derive_checkpoint, load_checkpoint
from chextriev.cli_options import add_epochs_option
from chextriev.io.datasets import load_records
from chextriev.model.adjacency import cooccurrence_adjacency
from chextriev.model.build import build_from_config
from chextriev.model.config import MODEL_FORMAT, VARIANTS, ModelConfig
from chextriev.training.data import RetrievalDataModule, split_records
from chextriev.training.feature_cache import FeatureCache
from chextriev.training.fit import fit_feature_stats, resolve_config, train_records
from chextriev.training.presets import get_preset
from metrics.model_eval import headline_scores

log = logging.getLogger(__name__)
KS = (3, 5, 10)
ORDER = ("untrained", *VARIANTS)  # the variant table's order


def evaluate(loaded: LoadedModel, test_records) -> dict:
    """The row of one model: :func:`metrics.model_eval.headline_scores` at k = 3, 5, 10, skip=False."""
    return headline_scores(loaded, test_records, KS, skip=False)


def parse_row(spec: str) -> tuple[str, dict]:
    """``NAME[:FIELD=VALUE...]`` -> ``(variant, config overrides)``; values typed as the
    :class:`~chextriev.model.config.ModelConfig` field's default. Raises ``ValueError`` naming
    what is wrong (unknown variant or field, a malformed part)."""
    name, *parts = spec.split(":")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r} in row {spec!r}; valid: {', '.join(VARIANTS)}")
    defaults = ModelConfig().to_dict()
    overrides: dict = {}
    for part in parts:
        field, sep, text = part.partition("=")
        if not sep or field not in defaults:
            raise ValueError(f"row {spec!r}: {part!r} is not FIELD=VALUE with a model config field "
                             f"(e.g. pooling=pcam, attention=channel, lse_gamma=5)")
        kind = type(defaults[field])
        overrides[field] = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
    replace(VARIANTS[name], **overrides)  # options that do not go together fail here, before training
    return name, overrides


def run_folder(spec: str) -> str:
    """The checkpoint folder of a row (``:`` becomes ``+``)."""
    return spec.replace(":", "+")


def trained_as(name: str, variants: list[str]) -> str | None:
    """The earlier variant of ``variants`` whose training ``name`` shares: the same config but
    for ``binary`` (``ath-binary`` reads the sign of the codes that ``ath`` trains, as a hashing
    method does at search time), else None."""
    config = VARIANTS.get(name)
    if config is None or not config.binary:
        return None
    for other in variants[:variants.index(name)]:
        if VARIANTS[other] == replace(config, binary=False):
            return other
    return None


def untrained_model(records, preset: str, seed: int, cache: Path) -> LoadedModel:
    """V6 at its initialisation, with the same (fitted, not learned) feature standardisation."""
    from chextriev.anatomy.atlas import Atlas

    splits = split_records(records)
    atlas = Atlas.fit(splits["train"])
    config = resolve_config("v6", get_preset(preset).model, records[0].class_names,
                            cooccurrence_adjacency(r.region_labels for r in splits["train"]))
    torch.manual_seed(seed)
    model = build_from_config(config)
    fit_feature_stats(model, RetrievalDataModule({"train": splits["train"]}, model, atlas, cache=FeatureCache(cache)))
    return LoadedModel.from_model(model, atlas=atlas, variant="untrained")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(per_seed: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Rows of every seed -> per model: the mean of each metric over seeds, ``seeds`` (count),
    and ``margin`` (mean, sd, min over seeds of mAP@10 minus that seed's untrained mAP@10)."""
    names = {name for rows in per_seed.values() for name in rows}
    summary: dict[str, dict] = {}
    for name in names:
        seeds = [seed for seed, rows in per_seed.items() if name in rows]
        rows = [per_seed[seed][name] for seed in seeds]
        entry: dict = {"seeds": len(rows)}
        for metric in rows[0]:
            if metric == "trained_as":
                entry[metric] = rows[0][metric]
                continue
            values = [r[metric] for r in rows if r.get(metric) is not None]
            entry[metric] = _mean_sd(values)[0] if values else None
        regions = [r["region_AUROC"] for r in rows if r.get("region_AUROC") is not None]
        entry["region_AUROC_min"] = float(min(regions)) if regions else None
        margins = [per_seed[s][name]["mAP@10"] - per_seed[s]["untrained"]["mAP@10"]
                   for s in seeds if "untrained" in per_seed[s]]
        if margins and name != "untrained":
            mean, sd = _mean_sd(margins)
            entry["margin"] = {"mean": mean, "sd": sd, "min": float(min(margins))}
        summary[name] = entry
    return summary


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(summary: dict[str, dict], meta: dict) -> str:
    header = ["model"] + [f"k={k} mAP/mHR/mRR" for k in KS] + [
        "AUROC", "region AUROC: mean (min)", "mAP@10 - untrained: mean ± sd (min)", "train s"]
    seeds = ", ".join(str(s) for s in meta["seeds"])
    lines = []
    if meta.get("command"):
        lines += ["```bash", meta["command"], "```", ""]
    lines += [(f"Test split (held-out patients): {meta['test_images']} images; preset `{meta['preset']}`; "
               f"archive `{meta['data']}`; class average, skip=False; mean over seeds {seeds}."), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered: list[str] = []
    for base in ORDER:  # the variant table's order, each variant's override rows after it
        ordered += [base] if base in summary else []
        ordered += sorted(name for name in summary if name.startswith(f"{base}:"))
    for name in ordered + sorted(set(summary) - set(ordered)):
        r = summary[name]
        cells = [f"{r[f'mAP@{k}']:.3f}/{r[f'mHR@{k}']:.3f}/{r[f'mRR@{k}']:.3f}" for k in KS]
        region = "n/a" if r.get("region_AUROC") is None else f"{r['region_AUROC']:.3f} ({r['region_AUROC_min']:.3f})"
        margin = r.get("margin")
        margin_cell = "-" if margin is None else f"{margin['mean']:+.3f} ± {margin['sd']:.3f} ({margin['min']:+.3f})"
        seconds = f"= {r['trained_as']}" if r.get("trained_as") else f"{r.get('train_seconds') or 0:.0f}"
        lines.append("| " + " | ".join([name, *cells, _cell(r.get("AUROC")), region, margin_cell, seconds]) + " |")
    return "\n".join(lines) + "\n"


def _previous_rows(path: Path, meta: dict) -> dict[str, dict[str, dict]]:
    """Rows of an earlier run with the same preset, archive and epoch limit, keyed by seed."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable: starting afresh", path)
        return {}
    same = {key: saved.get("meta", {}).get(key) for key in ("preset", "data", "max_epochs", "model_format")}
    if same != {key: meta[key] for key in same}:
        log.info("%s is from another preset, archive, epoch limit or model format: not reused", path)
        return {}
    return {str(seed): rows for seed, rows in saved.get("per_seed", {}).items()}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct integers, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="synthetic-small")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated rows: variant names, or NAME:FIELD=VALUE[:FIELD=VALUE] for a variant "
                             "with config overrides (default: every variant of the table)")
    add_epochs_option(parser, dest="max_epochs", aliases=("--max-epochs",),
                      help="at most N epochs per run (default: the preset's)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument("--fresh", action="store_true", help="retrain rows already in RESULTS_DIR/results.json")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 is much faster on a CPU shared with other jobs)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows_spec: dict[str, tuple[str, dict]] = {}
    for name in variants:
        try:
            rows_spec[name] = parse_row(name)
        except ValueError as error:
            parser.error(str(error))
    # One patient-disjoint split for every seed: the archive's own split column, else a hash of
    # the patient id, written into the records so that train_records(seed=...) keeps it.
    records = [replace(record, split=name) for name, items in split_records(load_records(args.data)).items()
               for record in items]
    test = [record for record in records if record.split == "test"]
    if len(test) <= max(KS):
        parser.error(f"{args.data} has {len(test)} test images: scoring at k={max(KS)} needs more than {max(KS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or args.out / "feature-cache"
    meta = {"preset": args.preset, "data": str(args.data.resolve()), "max_epochs": args.max_epochs,
            "model_format": MODEL_FORMAT, "test_images": len(test), "seeds": args.seeds,
            "command": "python -m benchmarks train_all_variants " + shlex.join(argv if argv is not None else sys.argv[1:])}
    results = args.out / "results.json"
    previous = {} if args.fresh else _previous_rows(results, meta)
    per_seed: dict[str, dict[str, dict]] = {}

    def save() -> None:
        results.write_text(json.dumps({"meta": meta, "per_seed": per_seed, "summary": summarise(per_seed)},
                                      indent=2))

    for seed in args.seeds:
        key = str(seed)
        done = previous.get(key, {})
        rows = per_seed.setdefault(key, {})
        run_dir = args.out / f"seed{seed}"
        for name in ["untrained", *variants]:
            if name in done:
                rows[name] = done[name]
                log.info("seed %d %s: reusing the row in %s", seed, name, results)
                continue
            start = time.perf_counter()
            shared = trained_as(name, variants) if name in VARIANTS else None
            if name == "untrained":
                rows[name] = evaluate(untrained_model(records, args.preset, seed, cache), test)
            elif shared is not None and (run_dir / shared / "best.ckpt").is_file():
                best = derive_checkpoint(run_dir / shared / "best.ckpt", run_dir / run_folder(name) / "best.ckpt",
                                         variant=name, binary=VARIANTS[name].binary)
                rows[name] = {**evaluate(load_checkpoint(best), test), "train_seconds": 0.0,
                              "trained_as": shared, "val_mAP@10": rows.get(shared, {}).get("val_mAP@10")}
            else:
                variant, overrides = rows_spec[name]
                result = train_records(records, run_dir / run_folder(name), variant=variant, preset=args.preset,
                                       max_epochs=args.max_epochs, seed=seed, cache_dir=cache, progress=False,
                                       model_overrides=overrides)
                rows[name] = {**evaluate(load_checkpoint(result.best), test),
                              "train_seconds": time.perf_counter() - start, "val_mAP@10": result.best_score}
            log.info("seed %d %s: test mAP@10 %.3f, AUROC %s, region AUROC %s (%.0f s)", seed, name,
                     rows[name]["mAP@10"], rows[name]["AUROC"], rows[name]["region_AUROC"],
                     time.perf_counter() - start)
            save()
    save()
    table = markdown(summarise(per_seed), meta)
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
