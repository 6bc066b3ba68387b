"""Evaluation from arrays: embeddings, probabilities and labels in, one report dict out.

This is the model-free core of ``chextriev evaluate`` (:mod:`metrics.cli` embeds the images
and calls :func:`evaluate_arrays`), so it is testable with plain arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chextriev.vocab import is_abnormality
from metrics.classification import classification_report
from metrics.localization import region_auroc
from metrics.retrieval import neighbors_from_embeddings, retrieval_metrics

log = logging.getLogger(__name__)


@dataclass
class EvaluationOptions:
    """Every option that changes a number; written into each report."""

    ks: tuple[int, ...] = (3, 5, 10)
    skip: bool = True
    exclude_same: str = "none"
    empty_class: str = "undefined"
    hit_rate: bool = True
    split: str | None = "test"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ks"] = list(self.ks)
        return d

    def describe(self) -> str:
        """One sentence naming every option, for the head of each report."""
        parts = [
            f"k = {', '.join(map(str, self.ks))}",
            "skip=True (queries without a hit dropped)" if self.skip else "skip=False (queries without a hit count 0)",
            "query excluded by id"
            + ("" if self.exclude_same == "none" else f", results of the same {self.exclude_same} excluded"),
            "classes without queries: "
            + ("undefined, left out of averages" if self.empty_class == "undefined" else "counted as 0 (published)"),
        ]
        if self.split:
            parts.append(f"split = {self.split}")
        return "; ".join(parts) + "."


@dataclass
class EvaluationInputs:
    """Arrays of the evaluated set (gallery = queries), N images, C classes.

    embeddings (N, D); labels (N, C) 0/1, NaN = masked entry; probabilities (N, C) or None; region_probabilities
    (N, 18, C) or None; region_labels (N, 18, C) or None; region_mask (N, 18) bool or None;
    val_labels / val_probabilities (M, C') for Youden thresholds, or None.
    ``probability_columns``: the label columns (C' of them) that the probability columns
    correspond to, when the model classifies only some of the data's classes; all when None.
    ``saved_thresholds`` (C',): the checkpoint's finding thresholds (NaN = none) for those
    columns, or None (a checkpoint without them); ``saved_threshold_rule`` how they were chosen.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    image_ids: Sequence[str] | None = None
    patient_ids: Sequence[Any] | None = None
    study_ids: Sequence[Any] | None = None
    probabilities: np.ndarray | None = None
    region_probabilities: np.ndarray | None = None
    region_labels: np.ndarray | None = None
    region_mask: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    val_probabilities: np.ndarray | None = None
    probability_columns: Sequence[int] | None = None
    saved_thresholds: np.ndarray | None = None
    saved_threshold_rule: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def evaluate_retrieval(inputs: EvaluationInputs, options: EvaluationOptions) -> tuple[dict[int, Any], np.ndarray]:
    """Retrieval metrics at every k; returns ``({k: metrics}, neighbors (N, max k))``."""
    kmax = max(options.ks)
    neighbors, _ = neighbors_from_embeddings(
        inputs.embeddings,
        kmax,
        exclude_self_ids=inputs.image_ids,
        patient_ids=inputs.patient_ids,
        study_ids=inputs.study_ids,
        exclude_same=options.exclude_same,
    )
    results = {
        int(k): retrieval_metrics(
            neighbors,
            inputs.labels,
            int(k),
            options.skip,
            empty_class=options.empty_class,
            hit_rate=options.hit_rate,
            class_names=list(inputs.class_names),
        )
        for k in options.ks
    }
    return results, neighbors


def masked_label_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any] | None:
    """``{"n_entries", "n_images", "per_class": {name: n}}`` of the masked (NaN) label entries,
    ``None`` when there is none. Masked entries are never queries and never relevant (retrieval)
    and left out of AUROC and thresholds (classification)."""
    mask = np.isnan(labels)
    if not mask.any():
        return None
    return {"n_entries": int(mask.sum()), "n_images": int(mask.any(axis=1).sum()),
            "per_class": {str(n): int(c) for n, c in zip(class_names, mask.sum(axis=0))}}


def abnormality_summary(classification: dict[str, Any], labels: np.ndarray) -> dict[str, Any]:
    """The abnormality model's figures from its one-class classification report: AUROC, and F1
    with sensitivity, specificity and precision at its threshold (the checkpoint's, chosen on
    the training run's validation split at max F1; else max F1 on this run's validation split),
    and the numbers of abnormal and normal images (``labels (N,)``, NaN unknown)."""
    name = next(iter(classification["auroc"]["per_class"]))
    known = labels[~np.isnan(labels)]
    out: dict[str, Any] = {"auroc": classification["auroc"]["per_class"][name],
                           "n_abnormal": int((known == 1).sum()), "n_normal": int((known == 0).sum()),
                           "threshold": None, "threshold_rule": None, "f1": None, "sensitivity": None,
                           "specificity": None, "precision": None}
    saved_rule = "the checkpoint's (max F1 on the training run's validation split)"
    for block, rule in ((classification.get("saved_thresholds"), saved_rule),
                        (classification.get("f1"), "max F1 on this evaluation's validation split")):
        entry = (block or {}).get("per_class", {}).get(name) or {}
        if entry.get("threshold") is not None:
            out.update({key: entry.get(key) for key in ("threshold", "f1", "sensitivity", "specificity", "precision")})
            out["threshold_rule"] = rule
            break
    return out


def evaluate_arrays(inputs: EvaluationInputs, options: EvaluationOptions | None = None) -> dict[str, Any]:
    """The whole report: retrieval, classification, region AUROC (when the inputs allow).

    Returns ``{"options", "meta", "n_images", "retrieval": {k: ...}, "classification",
    "region_auroc", "neighbors"}`` (``neighbors`` is an (N, max k) array for figures; drop it
    before JSON), and for the abnormality model (class list ``abnormal``) ``"abnormality"``
    (:func:`abnormality_summary`).
    """
    options = options or EvaluationOptions()
    labels = np.asarray(inputs.labels, dtype=np.float32)
    if labels.shape[0] != np.asarray(inputs.embeddings).shape[0]:
        raise ValueError(f"{labels.shape[0]} label rows for {len(inputs.embeddings)} embeddings")
    retrieval, neighbors = evaluate_retrieval(inputs, options)
    report: dict[str, Any] = {
        "options": options.as_dict(),
        "options_text": options.describe(),
        "meta": dict(inputs.meta),
        "n_images": int(labels.shape[0]),
        "image_ids": None if inputs.image_ids is None else [str(i) for i in inputs.image_ids],
        "n_normal": int(((labels == 0).all(axis=1)).sum()),
        "masked_labels": masked_label_counts(labels, inputs.class_names),
        "retrieval": retrieval,
        "classification": None,
        "region_auroc": None,
        "neighbors": neighbors,
    }
    cols = list(range(labels.shape[1])) if inputs.probability_columns is None else list(inputs.probability_columns)
    prob_names = [inputs.class_names[c] for c in cols]
    if inputs.probabilities is not None and cols:
        report["classification"] = classification_report(
            labels[:, cols],
            inputs.probabilities,
            prob_names,
            val_labels=inputs.val_labels,
            val_scores=inputs.val_probabilities,
            saved_thresholds=inputs.saved_thresholds,
            saved_rule=inputs.saved_threshold_rule,
        )
    if report["classification"] is not None and is_abnormality(prob_names):
        report["abnormality"] = abnormality_summary(report["classification"], labels[:, cols[0]])
    if inputs.region_probabilities is not None and inputs.region_labels is not None:
        report["region_auroc"] = region_auroc(
            inputs.region_labels,
            inputs.region_probabilities,
            inputs.region_mask,
            class_names=prob_names,
        )
    return report
