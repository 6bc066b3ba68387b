"""THE embedding function: validation, test, indexing and queries all go through it.

``embed_images(loaded, images, boxes=None, batch_size=16) -> EmbeddingBatch``. Images are
``(H, W)`` float arrays in [0, 1] (``chextriev.io.images.load_image``); boxes, per image, an
``(18, 4)`` array in original pixels (NaN rows = missing region, masked) or ``None`` (then
``loaded.box_provider`` gives them: detector and/or atlas).

The path from backbone features to arrays (:func:`outputs_to_arrays`) is shared with
training-time validation, which feeds cached backbone features through
:func:`embed_features` instead of recomputing the frozen backbone.

Precision: the model forward runs under ``chextriev.precision.autocast(loaded.precision)``
(bf16 autocast or plain fp32, fixed when the model is loaded); every returned array is float32
whatever the precision, and the L2 normalisations run in float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.model.region_features import box_mask
from chextriev.model.retrieval_model import ModelOutput, RetrievalModel
from chextriev.precision import autocast, min_cosine
from chextriev.vocab import NUM_REGIONS

BOX_SOURCES = ("given", "detector", "atlas", "detector+atlas")


@dataclass
class EmbeddingBatch:
    """Numpy float32 results for ``N`` images (see ARCHITECTURE.md).

    ``embeddings (N, D)`` L2-normalised; ``probabilities (N, C)`` (``(N, 0)`` for a model
    without a finding head, ``LoadedModel.has_findings`` False); ``region_probabilities
    (N, 18, C)`` or None (global baselines, models without a finding head);
    ``region_embeddings (N, 18, R)`` per-node readout (an encoder model's anatomy-pooled region
    features) L2-normalised (zeros for missing regions) or None; ``boxes (N, 18, 4)`` original pixels;
    ``box_sources`` one of ``BOX_SOURCES`` per image; ``binary_codes (N, K)`` uint8 0/1 for
    binary-code models (ATH), else None.
    """

    embeddings: np.ndarray
    probabilities: np.ndarray
    region_probabilities: np.ndarray | None
    region_embeddings: np.ndarray | None
    boxes: np.ndarray
    box_sources: list[str]
    binary_codes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def outputs_to_arrays(model: RetrievalModel, output: ModelOutput) -> dict[str, np.ndarray | None]:
    """A model output -> the numpy arrays of :class:`EmbeddingBatch` (all but boxes)."""
    arrays: dict[str, np.ndarray | None] = {
        "embeddings": model.retrieval_embedding(output).float().cpu().numpy().astype(np.float32),
        "probabilities": torch.sigmoid(model.image_logits(output).float()).cpu().numpy().astype(np.float32),
        "region_probabilities": None,
        "region_embeddings": None,
        "binary_codes": None,
    }
    if output.node_logits is not None:
        arrays["region_probabilities"] = (torch.sigmoid(output.node_logits.float())).cpu().numpy().astype(np.float32)
    if output.node_embeddings is not None and output.mask is not None:
        mask = output.mask.unsqueeze(-1).float()
        nodes = F.normalize(output.node_embeddings.float(), dim=-1) * mask
        arrays["region_embeddings"] = nodes.cpu().numpy().astype(np.float32)
    if getattr(model.config, "binary", False) and output.code is not None:
        arrays["binary_codes"] = (output.code >= 0).cpu().numpy().astype(np.uint8)
    return arrays


@torch.inference_mode()
def embed_features(model: RetrievalModel, features: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray | None]:
    """Backbone ``features`` (what ``model.extract`` returns) and ``mask (B, 18)`` -> arrays."""
    was_training = model.training
    model.eval()
    try:
        return outputs_to_arrays(model, model.forward_features(features, mask))
    finally:
        model.train(was_training)


def resolve_boxes(loaded, images: Sequence[np.ndarray], boxes) -> tuple[list[np.ndarray], list[str]]:
    """Per image ``(18, 4)`` original-pixel boxes and their source (given or from the provider)."""
    given = list(boxes) if boxes is not None else [None] * len(images)
    if len(given) != len(images):
        raise ValueError(f"{len(given)} box arrays for {len(images)} images")
    result: list[np.ndarray | None] = [None if b is None else np.asarray(b, dtype=np.float32) for b in given]
    sources = ["given" if b is not None else "" for b in result]
    needed = [i for i, b in enumerate(result) if b is None]
    if needed and loaded.has_regions:
        provided = loaded.box_provider.boxes_for([images[i] for i in needed])
        for i, (b, source) in zip(needed, provided):
            result[i], sources[i] = np.asarray(b, dtype=np.float32), source
    else:  # global models do not use region boxes: report the atlas template, skip the detector
        for i in needed:
            h, w = np.asarray(images[i]).shape[:2]
            result[i], sources[i] = loaded.box_provider.atlas.boxes_for(h, w), "atlas"
    for i, b in enumerate(result):
        if b.shape != (NUM_REGIONS, 4):
            raise ValueError(f"boxes of image {i} must be ({NUM_REGIONS}, 4), got {b.shape}")
    return result, sources


@torch.inference_mode()
def embed_images(loaded, images: Sequence[np.ndarray], boxes=None, batch_size: int = 16,
                 timings: dict[str, float] | None = None) -> EmbeddingBatch:
    """Embed ``images`` with ``loaded`` (:class:`chextriev.checkpoint.LoadedModel`).

    Returns an :class:`EmbeddingBatch` with one row per image, in order. The model runs in
    ``loaded.precision``. ``timings``, when given, receives wall milliseconds added to its keys
    ``boxes`` (box provider: detector and/or atlas) and ``model`` (resizing, backbone, graph,
    heads, conversion to numpy).
    """
    images = list(images)
    started = time.perf_counter()
    all_boxes, sources = resolve_boxes(loaded, images, boxes)
    boxed = time.perf_counter()
    model = loaded.model
    model.eval()
    parts: list[dict[str, np.ndarray | None]] = []
    for start in range(0, len(images), max(1, int(batch_size))):
        chunk = slice(start, start + batch_size)
        # the model's own input: resized image (roi, global, ATH) or crops of the original (crop)
        tensors, model_boxes = model.prepare_batch(images[chunk], all_boxes[chunk])
        tensors, model_boxes = tensors.to(loaded.device), model_boxes.to(loaded.device)
        if getattr(loaded, "verify_bf16", False):  # `auto` chose bf16: check it on this batch
            reference = _forward(model, tensors, model_boxes, "fp32", loaded.device)
            candidate = _forward(model, tensors, model_boxes, "bf16", loaded.device)
            loaded.settle_bf16(min_cosine(reference["embeddings"], candidate["embeddings"]), len(tensors))
            parts.append(reference)
            continue
        parts.append(_forward(model, tensors, model_boxes, getattr(loaded, "precision", "fp32"), loaded.device))
    if timings is not None:
        done = time.perf_counter()
        timings["boxes"] = timings.get("boxes", 0.0) + (boxed - started) * 1000
        timings["model"] = timings.get("model", 0.0) + (done - boxed) * 1000
    return _concat(parts, np.stack(all_boxes) if all_boxes else np.zeros((0, NUM_REGIONS, 4), np.float32),
                   sources, loaded)


def _forward(model: RetrievalModel, tensors: torch.Tensor, boxes: torch.Tensor, precision: str,
             device) -> dict[str, np.ndarray | None]:
    """One batch through the model in ``precision`` -> the arrays of :func:`outputs_to_arrays`."""
    with autocast(precision, device):
        return embed_features(model, model.extract(tensors, boxes), box_mask(boxes))


def _concat(parts, boxes: np.ndarray, sources: list[str], loaded) -> EmbeddingBatch:
    def join(key: str) -> np.ndarray | None:
        values = [p[key] for p in parts]
        if not values or values[0] is None:
            return None
        return np.concatenate(values)

    if not parts:
        c = len(loaded.class_names)
        findings = getattr(loaded, "has_findings", True)
        return EmbeddingBatch(np.zeros((0, loaded.embedding_dim), np.float32), np.zeros((0, c), np.float32),
                              np.zeros((0, NUM_REGIONS, c), np.float32) if loaded.has_regions and findings else None,
                              None, boxes, [])
    return EmbeddingBatch(
        embeddings=join("embeddings"),
        probabilities=join("probabilities"),
        region_probabilities=join("region_probabilities"),
        region_embeddings=join("region_embeddings"),
        boxes=boxes.astype(np.float32),
        box_sources=sources,
        binary_codes=join("binary_codes"),
    )
