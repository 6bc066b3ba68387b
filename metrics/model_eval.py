"""From a checkpoint and records to :class:`metrics.evaluate.EvaluationInputs`.

The only module of ``metrics/`` that runs a model: images are read with
``chextriev.io.images.load_image`` and embedded with THE embedding function,
``chextriev.embedding.embed_images`` (given boxes from the records when present, else the
checkpoint's box provider).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from chextriev.errors import DataFormatError
from chextriev.records import Record
from chextriev.vocab import NUM_REGIONS, equivalent_findings
from metrics.evaluate import EvaluationInputs
from metrics.figures import thumbnail

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Outputs of ``embed_images`` over many records, concatenated (N rows)."""

    embeddings: np.ndarray  # (N, D)
    probabilities: np.ndarray  # (N, C_model)
    region_probabilities: np.ndarray | None  # (N, 18, C_model)
    boxes: np.ndarray  # (N, 18, 4)
    box_sources: list[str]
    thumbnails: list[np.ndarray]
    binary_codes: np.ndarray | None = None  # (N, K) uint8 0/1 for binary-code models


def embed_records(loaded: Any, records: Sequence[Record], batch_size: int = 16, use_given_boxes: bool = True) -> Embedded:
    """Read and embed ``records`` in chunks (bounded memory), keeping small thumbnails. Each image
    reaches the model as an archived image or an upload does (THE image contract,
    :func:`chextriev.io.pixels.model_pixels`); boxes in and out are in the records' original
    pixels."""
    from chextriev.embedding import embed_images
    from chextriev.io.images import load_image
    from chextriev.io.pixels import model_pixels

    parts: list[Any] = []
    thumbs: list[np.ndarray] = []
    chunk = max(batch_size, 1) * 4
    for start in tqdm(range(0, len(records), chunk), desc="embedding", unit="chunk", leave=False):
        recs = records[start : start + chunk]
        images = [load_image(r.source) for r in recs]
        prepared = [model_pixels(image, loaded.max_input_side) for image in images]
        boxes = [p.to_model(r.boxes) if (use_given_boxes and r.boxes is not None and r.box_mask.any()) else None
                 for p, r in zip(prepared, recs)]
        batch = embed_images(loaded, [p.pixels for p in prepared], boxes, batch_size=batch_size)
        batch.boxes = np.stack([p.to_original(b) for p, b in zip(prepared, batch.boxes)])
        parts.append(batch)
        thumbs.extend(thumbnail(img) for img in images)
    if not parts:
        raise DataFormatError("no images to evaluate")
    region = None if parts[0].region_probabilities is None else np.concatenate([p.region_probabilities for p in parts])
    return Embedded(
        embeddings=np.concatenate([p.embeddings for p in parts]),
        probabilities=np.concatenate([p.probabilities for p in parts]),
        region_probabilities=region,
        boxes=np.concatenate([p.boxes for p in parts]),
        box_sources=[s for p in parts for s in p.box_sources],
        thumbnails=thumbs,
        binary_codes=None if getattr(parts[0], "binary_codes", None) is None
        else np.concatenate([p.binary_codes for p in parts]),
    )


def class_mapping(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[tuple[int, int]]:
    """``(model index, data index)`` pairs for classes both sides share, by name or through the
    vocabulary's cross tables (:func:`chextriev.vocab.equivalent_findings`: NIH, CheXpert and
    ImaGenome names of one finding), nearest name first."""
    model_classes, data_classes = list(model_classes), list(data_classes)
    pairs = []
    for d, name in enumerate(data_classes):
        for cand in equivalent_findings(name):
            if cand in model_classes:
                pairs.append((model_classes.index(cand), d))
                break
    return pairs


def label_matrix(records: Sequence[Record]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, C) labels over the records' class list (NaN rows for unknown labels)."""
    names = next((r.class_names for r in records if r.class_names), ())
    if not names:
        raise DataFormatError("the records carry no class list: cannot score retrieval without labels")
    out = np.full((len(records), len(names)), np.nan, dtype=np.float32)
    for i, r in enumerate(records):
        if r.labels is not None:
            if tuple(r.class_names) != tuple(names):
                raise DataFormatError(f"{r.image_id}: class list differs from the other records")
            out[i] = r.labels
    return out, tuple(names)


def build_inputs(
    loaded: Any,
    records: Sequence[Record],
    embedded: Embedded,
    *,
    val_records: Sequence[Record] | None = None,
    val_embedded: Embedded | None = None,
    meta: dict[str, Any] | None = None,
    use_binary_codes: bool = True,
) -> EvaluationInputs:
    """Assemble arrays for :func:`metrics.evaluate.evaluate_arrays`.

    Retrieval uses the data's own class list. Classification and region AUROC use the classes
    that the model and the data share (see :func:`class_mapping`), named as the data names them.
    Label entries that are NaN (masked, e.g. CheXpert's uncertain labels under ``mask``) are
    kept as NaN: such an image is no query and no relevant result for that class, and is left
    out of that class's AUROC and thresholds; images whose labels are all unknown are dropped.
    With ``use_binary_codes`` and a binary-code model, retrieval ranks by Hamming distance (the
    codes as +-1 vectors: cosine similarity is ``1 - 2 * hamming / K``, the same order).
    """
    labels, data_classes = label_matrix(records)
    known = ~np.isnan(labels).all(axis=1)  # a row with some masked (NaN) entries stays: see below
    if not known.all():
        log.warning("%d of %d images have unknown labels: they are left out", int((~known).sum()), len(records))
    masked = int(np.isnan(labels[known]).sum())
    if masked:
        log.info("%d masked label entries (e.g. uncertain CheXpert labels): never queries, never relevant, "
                 "left out of AUROC", masked)
    pairs = class_mapping(loaded.class_names, data_classes)
    m_idx = [m for m, _ in pairs]
    d_idx = [d for _, d in pairs]
    probs = embedded.probabilities[:, m_idx] if pairs else None
    region_probs = region_labels = region_mask = None
    if pairs and embedded.region_probabilities is not None and all(r.region_labels is not None for r in records):
        region_probs = embedded.region_probabilities[:, :, m_idx]
        region_labels = np.stack([r.region_labels for r in records])[:, :, d_idx]
        region_mask = np.stack([r.box_mask if r.boxes is not None else np.ones(NUM_REGIONS, bool) for r in records])
    val_labels = val_probs = None
    if pairs and val_records and val_embedded is not None:
        vl, _ = label_matrix(val_records)
        keep = ~np.isnan(vl).all(axis=1)
        val_labels = vl[keep][:, d_idx]
        val_probs = val_embedded.probabilities[keep][:, m_idx]

    saved = getattr(loaded, "thresholds", None)
    saved = None if saved is None or not pairs else np.asarray(saved, np.float32)[m_idx]
    meta = dict(meta or {})
    vectors = embedded.embeddings
    if use_binary_codes and embedded.binary_codes is not None:
        vectors = embedded.binary_codes.astype(np.float32) * 2.0 - 1.0
        meta["embedding"] = f"binary codes ({vectors.shape[1]} bits), Hamming ranking"
    else:
        meta["embedding"] = f"real-valued ({vectors.shape[1]}-d), cosine"

    def sel(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[known]

    return EvaluationInputs(
        embeddings=vectors[known],
        labels=labels[known],
        class_names=list(data_classes),
        image_ids=[r.image_id for r, k in zip(records, known) if k],
        patient_ids=[r.patient_id for r, k in zip(records, known) if k],
        study_ids=[r.study_id for r, k in zip(records, known) if k],
        probabilities=sel(probs),
        region_probabilities=sel(region_probs),
        region_labels=sel(region_labels),
        region_mask=sel(region_mask),
        val_labels=val_labels,
        val_probabilities=val_probs,
        probability_columns=d_idx,
        saved_thresholds=saved,
        saved_threshold_rule=getattr(loaded, "threshold_rule", None),
        meta=meta,
    )


def headline_scores(loaded: Any, records: Sequence[Record], ks: Sequence[int] = (3, 5, 10), *,
                    skip: bool = False, batch_size: int = 16) -> dict[str, float | None]:
    """One flat row of the headline figures of ``loaded`` on ``records`` (gallery = queries):
    ``mAP@k``, ``mHR@k``, ``mRR@k`` (class average) at every k, ``AUROC`` (mean over the classes
    the model and the data share) and ``region_AUROC`` (mean over (region, finding) cells; None
    for a model without regions or data without region labels).

    The evaluation of ``chextriev evaluate`` (:func:`embed_records`, :func:`build_inputs`,
    :func:`metrics.evaluate.evaluate_arrays`) without thresholds, localization or files: what
    the variant sweep and the benchmarks that train models score a checkpoint with."""
    from metrics.evaluate import EvaluationOptions, evaluate_arrays

    report = evaluate_arrays(build_inputs(loaded, records, embed_records(loaded, records, batch_size)),
                             EvaluationOptions(ks=tuple(ks), skip=skip, split=None))
    row: dict[str, float | None] = {f"{m}@{k}": report["retrieval"][k]["class_average"][m]
                                    for k in ks for m in ("mAP", "mHR", "mRR")}
    classification = report["classification"]
    row["AUROC"] = classification["auroc"]["mean"] if classification else None
    row["region_AUROC"] = report["region_auroc"]["mean"] if report["region_auroc"] else None
    return row
