"""The embedding step of the indexer: a checkpoint's model through THE embedding function.

:class:`ModelEmbedder` wraps :func:`chextriev.checkpoint.load_checkpoint` and
:func:`chextriev.embedding.embed_images`. The pipeline accepts any object with the same
attributes (``checkpoint_id``, ``embedding_dim``, ``class_names``, ``image_size``,
``max_input_side``: what the decoding workers prepare the pixels for, see
:func:`chextriev.io.pixels.model_pixels`) and
``__call__(images, boxes=None) -> EmbeddingBatch``-like result, which is how tests inject a cheap
embedder. ``boxes`` are the records' given region boxes (ImaGenome scene graphs, the synthetic
archive's), per image ``(18, 4)`` in pixels of the image passed, or ``None`` where the box
provider (detector / atlas) decides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Embedder(Protocol):
    checkpoint_id: str
    embedding_dim: int
    class_names: tuple[str, ...]
    image_size: int
    max_input_side: int | None

    def __call__(self, images: Sequence[np.ndarray],
                 boxes: Sequence[np.ndarray | None] | None = None):
        """``images``: list of ``(H, W)`` float32 in [0, 1]; ``boxes``: per image ``(18, 4)`` in
        that image's pixels (``box_sources`` then says ``"given"``) or None. Returns an object with
        ``embeddings (N, D)``, ``probabilities (N, C)``, ``region_probabilities (N, 18, C) | None``,
        ``region_embeddings (N, 18, R) | None``, ``boxes (N, 18, 4)``, ``box_sources`` (N)."""


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one logs and
    falls back to ``cpu`` (:func:`chextriev.cli_options.resolve_device`, the one rule)."""
    from chextriev.cli_options import resolve_device as resolve

    return resolve(device)


class ModelEmbedder:
    """A checkpoint's model (loaded once) applied through ``embed_images``."""

    def __init__(self, checkpoint: str | Path, *, device: str = "auto",
                 detector: str | Path | None = None, batch_size: int = 16, precision: str = "auto",
                 compile: str = "off"):
        from chextriev.checkpoint import load_checkpoint

        self.device = resolve_device(device)
        self.loaded = load_checkpoint(checkpoint, device=self.device, detector_path=detector,
                                      precision=precision, compile=compile == "on", compile_batch=batch_size)
        self.checkpoint_id = self.loaded.checkpoint_id
        self.embedding_dim = int(self.loaded.embedding_dim)
        self.class_names = tuple(self.loaded.class_names)
        self.image_size = int(self.loaded.image_size)
        self.max_input_side = self.loaded.max_input_side
        self.batch_size = batch_size
        self.detector_path = Path(detector) if detector else None  # recorded in the bundle
        self.precision_requested = precision

    def __call__(self, images: Sequence[np.ndarray],
                 boxes: Sequence[np.ndarray | None] | None = None):
        from chextriev.embedding import embed_images

        if boxes is not None and all(b is None for b in boxes):
            boxes = None
        return embed_images(self.loaded, list(images), boxes=boxes, batch_size=self.batch_size)
