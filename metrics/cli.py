"""``chextriev evaluate``: retrieval, classification and localization of a checkpoint.

    chextriev evaluate --checkpoint CKPT --data DIR [--split test] [--k 3 5 10] [--out DIR]
                       [--skip/--no-skip] [--exclude-same none|patient|study] [--json]
                       [--data-split checkpoint|dataset] [--class-list NAME]
                       [--uncertainty ones|zeros|mask] [--blank zeros|mask]   (CheXpert)
                       [--zero-shot/--no-zero-shot] [--prompts FILE]   (models with a text tower)

The split: the one the checkpoint's training run made (its patients, by seed; saved in every
checkpoint, :mod:`chextriev.splits`) is applied to the records read, so ``--split test`` (the
default) scores the held-out patients that training never saw, whatever the reader; a
checkpoint without a saved split, or other data, keeps the dataset's own splits
(``--data-split dataset`` asks for those). The class list defaults to the checkpoint's.

Every report states the label policy (CheXpert: what uncertain and blank labels became) and
where the split came from.

A model with a text tower (a CLIP-family encoder model from ``chextriev model init``) is also
evaluated zero-shot (:mod:`metrics.zero_shot`): text-to-image retrieval (mAP/mHR/mRR@k per
finding, one prompt per finding) and classification AUROC from the prompts of
``metrics/zero_shot_prompts.toml`` (``--prompts FILE`` for others). A model without a finding
head has no classification, region AUROC or heatmap localization: the report's ``notes`` say so
and why.

Writes ``metrics.json``, ``retrieval.csv``, ``report.md`` and PNG figures (per-class bars,
AUROC bars, a grid of queries with their top results) into ``--out``. Prints the summary
(``metrics.report.summary``) as markdown, or with ``--json`` as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from chextriev.cli_options import (
    add_compile_option,
    add_data_option,
    add_device_option,
    add_json_option,
    add_out_dir,
    add_precision_option,
    print_json,
    resolve_device,
)
from chextriev.errors import DataFormatError
from metrics.retrieval import EMPTY_CLASS_MODES, EXCLUDE_SAME_MODES

log = logging.getLogger(__name__)

#: ``metrics.localization_eval.LOCALIZATION_METHODS`` (not imported here: it loads matplotlib;
#: a test keeps the two equal)
LOCALIZATION_METHODS = ("cam", "gradcam", "gradcampp", "pcam", "ham")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="retrieval (mAP/mHR/mRR@k), AUROC and localization of a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="Lightning .ckpt written by `chextriev train`")
    add_data_option(p, required=True, help="dataset folder (any layout load_records detects)")
    p.add_argument("--split", default="test",
                   help="split evaluated (gallery = queries): train, validate, test (default: the held-out test "
                        "patients), or 'all' for every image")
    p.add_argument("--data-split", default="checkpoint", choices=("checkpoint", "dataset"),
                   help="where the splits come from: the split the checkpoint's training run made (default; the "
                        "dataset's own where the checkpoint records none or the data is other data), or the "
                        "dataset's own split column / official lists")
    p.add_argument("--val-split", default="validate",
                   help="split used to choose Youden thresholds ('none' to skip)")
    p.add_argument("--class-list", default=None,
                   help="class list for readers that need one (imagenome, nih, chexpert, nih8, chexpert5, abnormal; "
                        "default: the checkpoint's when it is one of them, else imagenome)")
    p.add_argument("--uncertainty", default=None, choices=("ones", "zeros", "mask"),
                   help="CheXpert: uncertain (-1) labels become 1 (U-Ones), 0 (U-Zeros) or masked "
                        "(never queries, never relevant, left out of AUROC; the reader's default)")
    p.add_argument("--blank", default=None, choices=("zeros", "mask"),
                   help="CheXpert: not-mentioned (blank) labels become 0 (the reader's default) or masked")
    p.add_argument("--k", nargs="+", type=int, default=[3, 5, 10], help="cut-offs")
    add_out_dir(p, default=Path("evaluation"), help="output folder")
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=True,
                   help="drop queries with no hit from the means (published default: --skip)")
    p.add_argument("--exclude-same", default="none", choices=EXCLUDE_SAME_MODES,
                   help="also exclude results of the query's patient or study")
    p.add_argument("--empty-class", default="undefined", choices=EMPTY_CLASS_MODES,
                   help="class without queries: undefined (left out) or zero (published)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate at most this many images (first N)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    add_device_option(p, default="cpu", help="torch device for the model")
    add_precision_option(p)
    add_compile_option(p)
    p.add_argument("--detector", type=Path, default=None, help="anatomy detector for images without boxes")
    p.add_argument("--localization", action=argparse.BooleanOptionalAction, default=True,
                   help="heatmap localization against true lesion boxes when the data has them")
    p.add_argument("--cam-method", default="gradcam", choices=LOCALIZATION_METHODS,
                   help="heatmaps: cam, gradcam, gradcampp of the checkpoint, pcam (its probability maps: a "
                        "checkpoint trained with --pooling pcam), or ham (needs --ham-checkpoint)")
    p.add_argument("--ham-checkpoint", type=Path, default=None,
                   help="HAM network for --cam-method ham (written by `chextriev train-ham`)")
    p.add_argument("--loc-max-images", type=int, default=50, help="images scored for localization")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="PNG figures: per-class bars, AUROC bars, a query grid")
    p.add_argument("--zero-shot", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-shot text-to-image retrieval and classification from one prompt per finding (default: "
                        "on for a model with a text tower, a CLIP-family encoder model; --zero-shot on another "
                        "model is an error that says why)")
    p.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                   help="the zero-shot prompts, a TOML file (default: metrics/zero_shot_prompts.toml; its comments "
                        "say the format)")
    p.add_argument("--binary-codes", action=argparse.BooleanOptionalAction, default=True,
                   help="for binary-code models (ATH binary): rank by Hamming distance of the codes")
    add_json_option(p, "the summary and the files written")
    p.set_defaults(func=run_evaluate)


def select_split(records: list, split: str, data: str = "the data", source: str = "the dataset's own splits") -> list:
    """Records of ``split`` ('all' keeps every record); a missing split names the present ones
    and what to do (:class:`chextriev.splits.SplitNotFoundError`)."""
    from chextriev.splits import select_split as select

    return select(records, split, data, source)


def default_class_list(loaded: Any) -> str:
    """The checkpoint's class list when it is a named one (``nih8``, ``abnormal``...), else imagenome."""
    from chextriev.vocab import class_list_name

    return class_list_name(loaded.class_names) or "imagenome"


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """Label-policy options for the dataset reader (CheXpert only: ``load_records`` refuses them
    for other data, whose labels have no uncertain or blank values)."""
    return {k: v for k, v in (("uncertainty", args.uncertainty), ("blank", args.blank)) if v is not None}


def label_policy(records: list) -> str:
    """The sentence every report states about the labels (the reader's policy when it has one)."""
    policies = sorted({r.meta["label_policy"] for r in records if r.meta.get("label_policy")})
    if policies:
        return "; ".join(policies)
    return "labels as the dataset gives them (0/1, no uncertain values; unknown labels left out)"


def run_evaluate(args: argparse.Namespace) -> int:
    from chextriev.checkpoint import load_checkpoint
    from chextriev.io.datasets import load_records
    from metrics.evaluate import EvaluationOptions, evaluate_arrays
    from metrics.figures import auroc_bars, per_class_bars, pick_queries, query_grid
    from metrics.model_eval import build_inputs, embed_records
    from metrics.report import summary, summary_markdown, write_report

    if not args.checkpoint.is_file():
        raise DataFormatError(f"checkpoint {args.checkpoint} does not exist")
    if args.localization and args.cam_method == "ham" and args.ham_checkpoint is None:
        raise DataFormatError("--cam-method ham needs --ham-checkpoint (a HAM network from `chextriev train-ham`)")
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), detector_path=args.detector,
                             precision=args.precision, compile=args.compile == "on",
                             compile_batch=args.batch_size)
    prompts = zero_shot_prompts(loaded, args)
    from chextriev.splits import apply_split

    class_list = args.class_list or default_class_list(loaded)
    all_records = load_records(args.data, class_list=class_list, **reader_options(args))
    if args.data_split == "checkpoint":
        all_records, split_source = apply_split(all_records, loaded.data_split)
    else:
        split_source = "the dataset's own splits (--data-split dataset)"
    records = select_split(all_records, args.split, str(args.data), split_source)
    if args.max_images:
        records = records[: args.max_images]
    log.info("evaluating %d images of %s (split %s, from %s)", len(records), args.data, args.split, split_source)
    embedded = embed_records(loaded, records, args.batch_size)
    val_records = val_embedded = None
    if args.val_split != "none" and args.val_split != args.split:
        val_records = [r for r in all_records if r.split == args.val_split and r.labels is not None]
        if args.max_images:
            val_records = val_records[: args.max_images]
        if val_records:
            val_embedded = embed_records(loaded, val_records, args.batch_size)
        else:
            log.info("no %r split: Youden thresholds are not chosen", args.val_split)
    sources = sorted(set(embedded.box_sources))
    meta = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_id": loaded.checkpoint_id,
        "variant": getattr(loaded, "variant", "") or getattr(loaded.config, "kind", ""),
        "data": str(args.data),
        "label_policy": label_policy(records),
        "box_sources": ", ".join(sources),
        "class_list": class_list,
        "split_source": split_source,
    }
    inputs = build_inputs(loaded, records, embedded, val_records=val_records, val_embedded=val_embedded, meta=meta,
                          use_binary_codes=args.binary_codes)
    options = EvaluationOptions(
        ks=tuple(args.k), skip=args.skip, exclude_same=args.exclude_same, empty_class=args.empty_class,
        split=args.split,
    )
    report = evaluate_arrays(inputs, options)
    notes = model_notes(loaded, args)
    if args.localization and loaded.has_findings:
        report["localization"] = localization_block(loaded, records, embedded, args)
    if prompts is not None:
        report["zero_shot"] = zero_shot_report(loaded, prompts, inputs, val_records, val_embedded, options)
    if notes:
        report["notes"] = notes
    out: Path = args.out
    paths = write_report(report, out, title=f"Evaluation of {args.checkpoint.name} on {args.data.name}")
    if args.figures:
        per_class_bars(report, out / "retrieval_per_class.png")
        auroc_bars(report, out / "auroc_per_class.png")
        known = [i for i, r in enumerate(records) if r.labels is not None]
        thumbs = [embedded.thumbnails[i] for i in known]
        queries = pick_queries(inputs.labels, 6)
        if queries:
            query_grid(thumbs, inputs.labels, inputs.class_names, report["neighbors"], queries,
                       out / "query_grid.png", n_results=min(5, max(args.k)))
    figures = summary(report)
    if args.json:
        print_json({**figures, "out": str(out), "files": [str(p) for p in paths.values()]})
    else:
        print(summary_markdown(figures, title="Summary"))
        print(f"\nwrote {', '.join(str(p) for p in paths.values())} and figures in {out}")
    return 0


def zero_shot_prompts(loaded: Any, args: argparse.Namespace) -> Any:
    """The prompts to evaluate ``loaded`` zero-shot with, or ``None`` (no ``--zero-shot`` and no
    text tower, or ``--no-zero-shot``); ``--zero-shot`` on a model without a text tower is an
    error that says why. Read before any image is embedded, so that a bad file fails at once."""
    from chextriev.localization.text import text_search_note
    from metrics.zero_shot import load_prompts

    if args.zero_shot is False:
        return None
    reason = text_search_note(loaded)
    if reason is not None:
        if args.zero_shot:
            raise DataFormatError(f"--zero-shot: {reason}")
        return None
    return load_prompts(args.prompts)


def model_notes(loaded: Any, args: argparse.Namespace) -> list[str]:
    """Why parts of the report are empty for this model (none for a model with a finding head):
    classification, region AUROC and heatmap localization need a finding head; zero-shot
    figures need a text tower."""
    from chextriev.localization.text import text_search_note

    if loaded.has_findings:
        return []
    notes = [f"classification, region AUROC and heatmap localization: none, {loaded.findings_note}"]
    reason = text_search_note(loaded)
    if args.zero_shot is False:
        notes.append("zero-shot figures: not computed (--no-zero-shot)")
    elif reason is not None:
        notes.append(f"zero-shot figures: none, {reason}")
    else:
        notes.append("classification and retrieval from text prompts instead: the zero-shot figures (the model's "
                     "text tower; zero_shot in metrics.json)")
    return notes


def zero_shot_report(loaded: Any, prompts: Any, inputs: Any, val_records: list | None, val_embedded: Any,
                     options: Any) -> dict[str, Any]:
    """:func:`metrics.zero_shot.zero_shot_block` over the evaluated images (the embeddings and
    labels retrieval was scored on), with the validation split's images for thresholds."""
    import numpy as np

    from metrics.model_eval import label_matrix
    from metrics.zero_shot import zero_shot_block

    val_images = val_labels = None
    if val_records and val_embedded is not None:
        labels, names = label_matrix(val_records)
        if tuple(names) == tuple(inputs.class_names):
            keep = ~np.isnan(labels).all(axis=1)
            val_images, val_labels = val_embedded.embeddings[keep], labels[keep]
    return zero_shot_block(loaded, inputs.embeddings, inputs.labels, inputs.class_names, prompts, ks=options.ks,
                           empty_class=options.empty_class, val_images=val_images, val_labels=val_labels)


def localization_block(loaded: Any, records: list, embedded: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """Localization against whatever ground truth the data holds (synthetic lesions, NIH boxes)."""
    from metrics.localization_eval import evaluate_localization, lesion_box_truth, synthetic_truth

    box_masks = False  # synthetic lesions carry their own masks; NIH / CheXpert boxes serve as masks
    if (args.data / "truth").is_dir():
        truth, name = synthetic_truth(args.data), "synthetic lesions"
    elif any(r.meta.get("lesion_boxes") for r in records):
        dataset = next(r.meta.get("dataset", "") for r in records if r.meta.get("lesion_boxes"))
        truth, name = lesion_box_truth, {"chexpert": "CheXpert boxes (HAM annotations)"}.get(dataset, "NIH boxes")
        box_masks = True
    else:
        log.info("no ground-truth lesion boxes in %s: localization skipped", args.data)
        return None
    explained = loaded
    if args.cam_method == "ham":  # HAM explains with its own network, trained by `chextriev train-ham`
        from chextriev.localization import load_ham

        explained = load_ham(args.ham_checkpoint, device=args.device)
    try:
        result = evaluate_localization(
            explained, records, truth, boxes=list(embedded.boxes), method=args.cam_method,
            max_images=args.loc_max_images, box_masks=box_masks,
        )
    except ImportError as exc:  # heatmaps are provided by chextriev.localization
        log.warning("localization skipped: %s", exc)
        return None
    except Exception as exc:
        from chextriev.localization.adapters import CamUnsupportedError

        if isinstance(exc, CamUnsupportedError):  # e.g. a model without a feature map
            log.warning("localization skipped: %s", exc)
            return None
        raise
    if args.cam_method == "ham":
        result["ham_checkpoint"] = str(args.ham_checkpoint)
        result["ham_checkpoint_id"] = explained.checkpoint_id
    return {name: result}
