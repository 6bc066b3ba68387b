"""On-disk cache of frozen backbone features (``model.extract`` output, before the projection).

Key = sha256 of: the image content hash, the backbone name and weights id (file hash or
``random-seed<N>``), the feature mode, image size, crop size, RoIAlign grid, the model kind and
the model-input boxes (rounded to 1/100 px). So every variant trained on the same archive with
the same frozen backbone reuses one set of features, and a change of any of these recomputes.

Layout: ``CACHE_DIR/<key[:2]>/<key>.npy`` (float32, ``(18, F)`` region or ``(F,)`` global).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from chextriev.model.backbone import weights_id
from chextriev.model.config import ModelConfig

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$CHEXTRIEV_CACHE`` or ``~/.cache/chextriev/features``."""
    return Path(os.environ.get("CHEXTRIEV_CACHE", Path.home() / ".cache" / "chextriev" / "features"))


def content_hash(source: str | Path | bytes) -> str:
    """sha256 of the image file's bytes (or of the bytes themselves)."""
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
    else:
        with open(source, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def config_signature(config: ModelConfig) -> str:
    """The part of the key that depends on the model: backbone, weights, mode, sizes."""
    kind = "global" if config.kind == "global" else "regions"
    parts = [kind, config.backbone, weights_id(config.backbone_weights, config.backbone_seed), str(config.image_size)]
    if kind == "regions":
        parts += [config.feature_mode, str(config.crop_size if config.feature_mode == "crop" else config.roi_output)]
    return "|".join(parts)


class FeatureCache:
    """``get(key)`` / ``put(key, array)`` plus :meth:`features` that fills misses in batches."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(image_hash: str, signature: str, boxes: np.ndarray | None) -> str:
        digest = hashlib.sha256(f"{image_hash}|{signature}|".encode())
        if boxes is not None:
            digest.update(np.nan_to_num(np.round(np.asarray(boxes, np.float64), 2), nan=-1.0).tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("feature cache: unreadable entry %s, recomputing", path)
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array, dtype=np.float32))
        os.replace(tmp, path)

    def ensure(self, keys: Sequence[str], compute: Callable[[list[int]], torch.Tensor | np.ndarray]) -> None:
        """Make sure every key is cached; ``compute(indices)`` returns features of the missing ones."""
        missing = [i for i, key in enumerate(keys) if not self.path(key).is_file()]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            values = compute(missing)
            values = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            for i, value in zip(missing, values):
                self.put(keys[i], value)
