"""Write an evaluation report as JSON, CSV and markdown (every file states its options)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

RETRIEVAL_COLUMNS: tuple[str, ...] = ("mAP", "mHR", "mRR", "hit")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if math.isnan(f) or math.isinf(f) else f
    return value


def fmt(value: float | None, digits: int = 3) -> str:
    """``.481`` style (published table); ``n/a`` for undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("0.") else text


def write_json(report: dict[str, Any], path: Path) -> Path:
    """The report (without the neighbour array) as indented JSON."""
    data = {k: v for k, v in report.items() if k != "neighbors"}
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return path


def retrieval_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (k, class or average) with mAP, mHR, mRR, hit, n_queries, n_kept, and the
    options and label policy the report used."""
    rows = []
    opts = report["options"]
    policy = (report.get("meta") or {}).get("label_policy")
    for k, res in report["retrieval"].items():
        base = {"k": int(k), "skip": opts["skip"], "exclude_same": opts["exclude_same"],
                "empty_class": opts["empty_class"], "label_policy": policy}
        for name, entry in res["per_class"].items():
            rows.append({**base, "class": name, **{m: entry.get(m) for m in RETRIEVAL_COLUMNS},
                         "n_queries": entry["n_queries"], "n_kept": entry["n_kept"]})
        for avg in ("class_average", "weighted_average"):
            rows.append({**base, "class": avg, **{m: res[avg].get(m) for m in RETRIEVAL_COLUMNS},
                         "n_queries": None, "n_kept": None})
    return rows


def write_csv(report: dict[str, Any], path: Path) -> Path:
    """Retrieval rows (see :func:`retrieval_rows`) as CSV; undefined values are empty."""
    rows = retrieval_rows(report)
    fields = ["k", "class", *RETRIEVAL_COLUMNS, "n_queries", "n_kept", "skip", "exclude_same", "empty_class",
              "label_policy"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({f: ("" if row.get(f) is None else row.get(f)) for f in fields})
    return path


def triple(avg: dict[str, Any]) -> str:
    """``mAP/mHR/mRR`` in the published table's style."""
    return "/".join(fmt(avg.get(m)) for m in ("mAP", "mHR", "mRR"))


SUMMARY_META: tuple[str, ...] = ("checkpoint", "checkpoint_id", "variant", "data", "class_list", "split_source",
                                 "label_policy", "embedding", "box_sources")
AVERAGES: tuple[str, ...] = ("class_average", "weighted_average")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a report (what ``chextriev evaluate`` prints, as prose through
    :func:`summary_markdown` or as JSON with ``--json``): options, the model and data, image
    counts, and the class and weighted averages of mAP/mHR/mRR at each k. JSON-ready (an
    undefined value is ``None``)."""
    meta = report.get("meta") or {}
    return _jsonable({
        "options": report.get("options_text", ""),
        "meta": {key: meta[key] for key in SUMMARY_META if key in meta},
        "n_images": report["n_images"],
        "n_normal": report.get("n_normal", 0),
        "masked_labels": report.get("masked_labels"),
        "retrieval": {str(k): {avg: {m: res[avg].get(m) for m in ("mAP", "mHR", "mRR")} for avg in AVERAGES}
                      for k, res in report["retrieval"].items()},
        **({"abnormality": report["abnormality"]} if report.get("abnormality") else {}),
        **({"notes": list(report["notes"])} if report.get("notes") else {}),
        **({"zero_shot": zero_shot_summary(report["zero_shot"])} if report.get("zero_shot") else {}),
    })


def zero_shot_summary(block: dict[str, Any]) -> dict[str, Any]:
    """The headline zero-shot figures: the prompts file, how many findings had a prompt (and
    which had none), the class averages of mAP/mHR/mRR at each k, the mean AUROC (and, for the
    abnormality class list, its summary)."""
    retrieval = block.get("retrieval") or {}
    classification = block.get("classification") or {}
    return {
        "prompts_file": block.get("prompts_file"),
        "n_findings": len(block.get("prompts") or {}),
        "no_prompt": list(block.get("no_prompt") or []),
        "retrieval": {str(k): {m: res["class_average"].get(m) for m in ("mAP", "mHR", "mRR")}
                      for k, res in retrieval.items()},
        "auroc": (classification.get("auroc") or {}).get("mean"),
        **({"abnormality": block["abnormality"]} if block.get("abnormality") else {}),
    }


def abnormality_line(figures: dict[str, Any]) -> str:
    """``abnormal: AUROC .912; F1 .870 at threshold 0.431 (the checkpoint's ...)``."""
    if figures.get("auroc") is None and figures.get("f1") is None:
        return f"abnormal: AUROC n/a ({figures['n_abnormal']} abnormal, {figures['n_normal']} normal images)"
    text = f"abnormal: AUROC {fmt(figures.get('auroc'))}"
    if figures.get("threshold") is not None:
        text += (f"; F1 {fmt(figures.get('f1'))} at threshold {figures['threshold']:.3f} ({figures['threshold_rule']}; "
                 f"sensitivity {fmt(figures.get('sensitivity'))}, specificity {fmt(figures.get('specificity'))})")
    else:
        text += "; no threshold (no validation split and none in the checkpoint)"
    return text + f"; {figures['n_abnormal']} abnormal, {figures['n_normal']} normal images"


def summary_markdown(figures: dict[str, Any], title: str = "Evaluation") -> str:
    """:func:`summary` figures as markdown: the head of :func:`markdown`."""
    lines = [f"# {title}", "", f"Options: {figures['options']}", ""]
    lines += [f"- {key}: {value}" for key, value in figures["meta"].items()]
    lines.append(f"- images: {figures['n_images']} ({figures['n_normal']} normal: never queries)")
    masked = figures.get("masked_labels")
    if masked:
        per = ", ".join(f"{n} {c}" for n, c in masked["per_class"].items() if c)
        lines.append(f"- masked label entries: {masked['n_entries']} on {masked['n_images']} images "
                     f"(never queries, never relevant, left out of AUROC): {per}")
    if figures.get("abnormality"):
        lines.append(f"- {abnormality_line(figures['abnormality'])}")
    lines += [f"- note: {note}" for note in figures.get("notes", [])]
    lines.append("")
    ks = list(figures["retrieval"])
    lines += ["## Retrieval (mAP/mHR/mRR)", "", "| average | " + " | ".join(f"k={k}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    for avg in AVERAGES:
        lines.append(f"| {avg.replace('_', ' ')} | " + " | ".join(triple(figures["retrieval"][k][avg]) for k in ks) + " |")
    zero = figures.get("zero_shot")
    if zero:
        zks = list(zero["retrieval"])
        lines += ["", "## Zero-shot, from one text prompt per finding", "",
                  f"Prompts: {zero['prompts_file']} ({zero['n_findings']} findings"
                  + (f"; no prompt for {', '.join(zero['no_prompt'])}" if zero["no_prompt"] else "") + ").", "",
                  "| text-to-image retrieval (mAP/mHR/mRR), class average | "
                  + " | ".join(f"k={k}" for k in zks) + " | classification AUROC (mean) |",
                  "|---|" + "---|" * (len(zks) + 1),
                  "| prompts as queries | " + " | ".join(triple(zero["retrieval"][k]) for k in zks)
                  + f" | {fmt(zero['auroc'])} |"]
        if zero.get("abnormality"):
            lines += ["", f"Zero-shot {abnormality_line(zero['abnormality'])}"]
    return "\n".join(lines)


def markdown(report: dict[str, Any], title: str = "Evaluation") -> str:
    """The report as markdown: options, retrieval per k, classification, regions."""
    lines = [summary_markdown(summary(report), title), ""]
    ks = list(report["retrieval"])
    for k in ks:
        res = report["retrieval"][k]
        has_hit = res["options"]["hit_rate"]
        head = "| class | queries | kept | mAP | mHR | mRR |" + (" hit |" if has_hit else "")
        lines += [f"### k = {k}", "", head, "|---" * (head.count("|") - 1) + "|"]
        for name, e in res["per_class"].items():
            cells = [str(name), str(e["n_queries"]), str(e["n_kept"]), fmt(e["mAP"]), fmt(e["mHR"]), fmt(e["mRR"])]
            if has_hit:
                cells.append(fmt(e.get("hit")))
            lines.append("| " + " | ".join(cells) + " |")
        if res["undefined_classes"]:
            lines.append(f"\nUndefined (no {'kept ' if res['options']['skip'] else ''}query): "
                         + ", ".join(map(str, res["undefined_classes"])))
        lines.append("")
    cls = report.get("classification")
    if cls:
        au = cls["auroc"]
        lines += ["## Classification (AUROC, F1)", "", f"Mean over {au['n_defined']} defined classes: {fmt(au['mean'])}", ""]
        thr = (cls.get("thresholds") or {}).get("per_class", {})
        f1 = (cls.get("f1") or {}).get("per_class", {})
        saved = (cls.get("saved_thresholds") or {}).get("per_class", {})
        for label, block in (("max-F1 thresholds chosen on validation", cls.get("f1")),
                             ("the checkpoint's thresholds", cls.get("saved_thresholds"))):
            if block:
                lines.append(f"Mean test F1 at {label}: {fmt(block.get('mean'))}")
        if "checkpoint" in (report.get("meta") or {}) and not cls.get("saved_thresholds"):
            lines.append("The checkpoint has no finding thresholds (written before they were saved).")
        lines += ["", ("| class | AUROC | F1 | threshold (val, max F1) | F1 (checkpoint threshold) | checkpoint "
                       "threshold | threshold (val, Youden) | sensitivity | specificity | F1 (Youden) |"), "|---" * 10 + "|"]
        for name, v in au["per_class"].items():
            t, f, c = thr.get(name, {}), f1.get(name, {}), saved.get(name, {})
            lines.append(f"| {name} | {fmt(v)} | {fmt(f.get('f1'))} | {fmt(f.get('threshold'))} | {fmt(c.get('f1'))} | "
                         f"{fmt(c.get('threshold'))} | {fmt(t.get('threshold'))} | {fmt(t.get('sensitivity'))} | "
                         f"{fmt(t.get('specificity'))} | {fmt(t.get('f1'))} |")
        if not cls.get("thresholds"):
            lines.append("\nNo validation data: thresholds not chosen (never chosen on test).")
        lines.append("")
    reg = report.get("region_auroc")
    if reg:
        lines += ["## Anatomy-level localization (region AUROC)", "",
                  f"Mean over {reg['n_defined']} defined (region, finding) cells: {fmt(reg['mean'])}", "",
                  "| finding | mean AUROC over regions |", "|---|---|"]
        for name, v in reg["per_finding_mean"].items():
            lines.append(f"| {name} | {fmt(v)} |")
        lines.append("")
    zero = report.get("zero_shot")
    if zero and zero.get("retrieval"):
        ks = list(zero["retrieval"])
        auroc = zero["classification"]["auroc"]["per_class"]
        rules = f"Retrieval: {zero['retrieval_rule']}. Classification score: {zero['score_rule']}."
        lines += ["## Zero-shot per finding", "", rules, "",
                  "| finding | prompt | negative prompt | AUROC | " + " | ".join(f"mAP@{k}" for k in ks) + " |",
                  "|---" * (4 + len(ks)) + "|"]
        for name, entry in zero["prompts"].items():
            cells = [str(name), entry["prompt"], entry["negative"] or "—", fmt(auroc.get(name))]
            cells += [fmt(zero["retrieval"][k]["per_class"][name]["mAP"]) for k in ks]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    loc = report.get("localization")
    if loc:
        lines += ["## Pixel-level localization (heatmap boxes; ChestX-ray8 accuracy, HAM TIoU/TIoR)", ""]
        for source, result in loc.items():
            block = result["boxes"]
            ts = block["thresholds"]
            lines += [(f"### {source}: {block['n_cases']} (image, finding) cases, {result['method']}, "
                       f"box threshold {result['box_threshold']}"), "",
                      "| measure | " + " | ".join(f"T={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
            for m in ("iou", "iobb"):
                lines.append(f"| {m} accuracy | " + " | ".join(fmt(block[m].get(t)) for t in ts) + " |")
            pix = result.get("pixels")
            if pix:
                against = f" (vs {pix['truth']})" if pix.get("truth") else ""
                for m in ("TIoU", "TIoR"):
                    lines.append(f"| {m}{against} | " + " | ".join(fmt(pix[m].get(t)) for t in ts) + " |")
            if result.get("unmapped_findings"):
                lines.append(f"\nNot scored (no model class): {', '.join(result['unmapped_findings'])}")
            lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path, title: str = "Evaluation") -> dict[str, Path]:
    """Write ``metrics.json``, ``retrieval.csv`` and ``report.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(report, out_dir / "metrics.json"),
        "csv": write_csv(report, out_dir / "retrieval.csv"),
        "markdown": _write_text(out_dir / "report.md", markdown(report, title)),
    }


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path
