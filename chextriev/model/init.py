"""``chextriev model init``: an index-ready checkpoint from a foundation encoder alone, no labels.

:func:`init_encoder_model` reads the encoder from the user's files
(:func:`chextriev.model.encoders.files.resolve_encoder`), builds the ``encoder`` kind
(:mod:`chextriev.model.encoder_model`: the encoder's global embedding, or the mean of its 18
anatomy-pooled region embeddings), fits the per-channel feature standardisation on a random
sample of the user's own archive (frontal images; no label is read: records are used for their
pixels, and for their region boxes when the archive has some), and writes a checkpoint that
``chextriev index``, ``serve`` and ``evaluate`` load like a trained one
(:func:`chextriev.checkpoint.load_checkpoint`): the model config (with the encoder's architecture
and input preparation), the atlas, an empty class list (no finding head: no predicted findings),
the weights (the encoder's, and its text tower's for a CLIP-family encoder), and the tokenizer
files the text tower needs (``encoder_files``).

Standardisation (``standardize``): ``auto`` standardises an image-only encoder's embedding
(RAD-DINO, DINOv2) and keeps a joint image-text embedding (BiomedCLIP, CheXzero, MedSigLIP) as
the encoder gives it, so that ``LoadedModel.text_encoder`` scores text against it exactly as
the model was trained; ``on`` standardises every embedding (then there is no text search);
``off`` none. The statistics are fitted and saved in every case.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chextriev.errors import DataFormatError, ImageReadError, UnknownNameError
from chextriev.model.config import (
    EMBEDDING_SOURCES,
    ENCODER_FILES_KEY,
    MODEL_FORMAT,
    STATE_PREFIX,
    ModelConfig,
)
from chextriev.model.encoders.table import ENCODERS, input_side

log = logging.getLogger(__name__)

STANDARDIZE = ("auto", "on", "off")
DEFAULT_SAMPLE = 512


@dataclass
class InitResult:
    out: Path
    backbone: str
    embedding: str
    standardized: bool
    text_search: bool
    images_read: int
    images_skipped: int
    records: int
    embedding_dim: int
    seconds: float
    box_source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "backbone": self.backbone, "embedding": self.embedding,
                "standardized": self.standardized, "text_search": self.text_search,
                "images_read": self.images_read, "images_skipped": self.images_skipped, "records": self.records,
                "embedding_dim": self.embedding_dim, "seconds": round(self.seconds, 2), "box_source": self.box_source,
                "labels_read": 0, "notes": self.notes}


def encoder_model_config(backbone: str, spec: dict[str, Any], *, weights: str | None, embedding: str = "global",
                         standardize: bool = True, seed: int = 0) -> ModelConfig:
    """The ``encoder`` kind's config for an encoder description (``resolve_encoder(...).spec``)."""
    return ModelConfig(kind="encoder", backbone=backbone, backbone_weights=weights, encoder=spec,
                       image_size=input_side(spec["input"]), class_names=(), graph="none", edges="none",
                       abs_pos=False, embedding_source=embedding, standardize=standardize, backbone_seed=seed)


def _frontal(records: list) -> list:
    from chextriev.io.fields import view_decision

    return [r for r in records if view_decision(r.view)[1] is None]


def _sample_pixels(records: list, count: int, seed: int, progress: bool):
    """Up to ``count`` decoded frontal images of ``records`` (random, seeded), with the records'
    own boxes where they have them."""
    from tqdm import tqdm

    from chextriev.io.images import load_image
    from chextriev.io.sources import fetch_bytes

    order = list(records)
    random.Random(seed).shuffle(order)
    images, boxes, skipped = [], [], 0
    bar = tqdm(total=min(count, len(order)), desc="sample", unit="img", disable=not progress)
    for record in order:
        if len(images) >= count:
            break
        try:
            pixels = load_image(fetch_bytes(record))
        except ImageReadError as error:
            skipped += 1
            log.warning("skipped %s: %s", record.image_id, error)
            continue
        # pixels: chextriev.io.pixels.model_pixels(pixels, model.max_input_side) once it lands
        images.append(pixels)
        boxes.append(None if record.boxes is None else np.asarray(record.boxes, np.float32))
        bar.update(1)
    bar.close()
    return images, boxes, skipped


@torch.inference_mode()
def fit_encoder_stats(model, images, boxes, *, batch_size: int = 16, device="cpu", atlas=None) -> int:
    """Fit the ``encoder`` model's global and region standardisation on ``images`` (per-channel
    mean and std over the images, and over every present region). Returns the images used."""
    from chextriev.anatomy.atlas import Atlas
    from chextriev.model.tensors import box_mask

    atlas = atlas or Atlas.default()
    model.eval().to(device)
    globals_, regions = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        chunk_boxes = [b if b is not None else atlas.boxes_for(*np.asarray(i).shape[:2])
                       for i, b in zip(chunk, boxes[start:start + batch_size])]
        inputs, model_boxes = model.prepare_batch(chunk, chunk_boxes)
        features = model.extract(inputs.to(device), model_boxes.to(device)).float().cpu()
        mask = box_mask(model_boxes)
        globals_.append(features[:, 0])
        regions.append(features[:, 1:][mask])
    if not globals_:
        raise DataFormatError("no image could be read to fit the feature standardisation")
    global_features = torch.cat(globals_)
    region_features = torch.cat(regions)
    model.features.set_feature_stats(global_features.mean(0), global_features.std(0, unbiased=False))
    if len(region_features):
        model.features.set_region_stats(region_features.mean(0), region_features.std(0, unbiased=False))
    return int(global_features.shape[0])


def write_encoder_checkpoint(model, out: str | Path, *, atlas, encoder_files: dict[str, bytes] | None = None,
                             info: dict[str, Any] | None = None) -> Path:
    """Save an ``encoder`` model as a checkpoint :func:`chextriev.checkpoint.load_checkpoint`
    reads (the ``hyper_parameters`` / ``state_dict`` layout of ``chextriev train``)."""
    config = model.config
    data = {
        "hyper_parameters": {
            "model_config": {**config.to_dict(), "backbone_weights": None}, "variant": f"encoder:{config.backbone}",
            "preset": "", "class_names": [], "image_size": config.image_size, "atlas": atlas.to_dict(),
            "model_format": MODEL_FORMAT, "labels": "none", "init": dict(info or {}),
        },
        "state_dict": {STATE_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    if encoder_files is not None:
        data[ENCODER_FILES_KEY] = dict(encoder_files)
    from chextriev.files import atomic_path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_path(out, lambda tmp: torch.save(data, tmp))


def init_encoder_model(backbone: str, weights: str | Path | None, data: str | Path, out: str | Path, *,
                       embedding: str = "global", standardize: str = "auto", sample: int = DEFAULT_SAMPLE,
                       text: bool = True, seed: int = 0, device: str = "cpu", batch_size: int = 16,
                       progress: bool = True) -> InitResult:
    """Make an index-ready ``encoder`` checkpoint at ``out`` (see the module docstring)."""
    from chextriev.anatomy.atlas import Atlas
    from chextriev.io.sources import open_source
    from chextriev.model.build import build_from_config
    from chextriev.model.encoders.files import resolve_encoder

    started = time.perf_counter()
    if backbone not in ENCODERS:
        raise UnknownNameError("encoder", backbone, ENCODERS)
    if embedding not in EMBEDDING_SOURCES:
        raise UnknownNameError("embedding source", embedding, EMBEDDING_SOURCES)
    if standardize not in STANDARDIZE:
        raise UnknownNameError("standardize mode", standardize, STANDARDIZE)
    if sample < 2:
        raise ValueError(f"--sample must be at least 2 images, got {sample}")
    found = resolve_encoder(backbone, weights, seed=seed, with_text=text)
    joint = bool(found.spec["joint"])
    standardized = {"on": True, "off": False}.get(standardize, not joint)
    notes = []
    if weights is None:
        notes.append(f"random weights: no --backbone-weights given, the {backbone} architecture is randomly "
                     "initialised (the plumbing, not the encoder's features)")
    if found.spec["text"] and standardized:
        notes.append("the embedding is standardised: it leaves the joint image-text space, so there is no text search")
    config = encoder_model_config(backbone, found.spec, weights=None if weights is None else str(weights),
                                  embedding=embedding, standardize=standardized, seed=seed)
    model = build_from_config(config)
    source = open_source(data)
    records = _frontal(list(source.iter_records()))
    if not records:
        raise DataFormatError(f"{data}: no frontal image to sample")
    with_boxes = [r for r in records if r.boxes is not None]
    atlas = Atlas.fit(with_boxes) if with_boxes else Atlas.default()
    box_source = f"the archive's own boxes ({len(with_boxes)} images)" if with_boxes else "the anatomical atlas"
    images, boxes, skipped = _sample_pixels(records, sample, seed, progress)
    used = fit_encoder_stats(model, images, boxes, batch_size=batch_size, device=device, atlas=atlas)
    text_search = model.text_tower is not None
    info = {"sample": used, "records": len(records), "seed": seed, "standardize": standardize,
            "weights_id": found.spec["weights_id"], "box_source": box_source}
    write_encoder_checkpoint(model.cpu(), out, atlas=atlas, encoder_files=found.tokenizer_files if text_search else None,
                             info=info)
    log.info("encoder model %s (%s embedding%s) written to %s: standardisation fitted on %d of %d frontal images",
             backbone, embedding, ", standardised" if standardized else "", out, used, len(records))
    return InitResult(out=Path(out), backbone=backbone, embedding=embedding, standardized=standardized,
                      text_search=text_search, images_read=used, images_skipped=skipped, records=len(records),
                      embedding_dim=model.embedding_dim, seconds=time.perf_counter() - started,
                      box_source=box_source, notes=notes)
