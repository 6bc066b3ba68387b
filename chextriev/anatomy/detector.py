"""The anatomy detector: Faster R-CNN over the 18 regions, one box per region.

>>> detector = AnatomyDetector.load("detector.pt")          # doctest: +SKIP
>>> [(boxes, scores)] = detector.predict([image])            # doctest: +SKIP
>>> boxes.shape, scores.shape                                # (18, 4) pixels, (18,)

Each image ``(H, W)`` float32 in ``[0, 1]`` is resized to ``image_size`` square (aspect not
kept, like the published region crops), replicated to 3 channels, and the predicted boxes are
scaled back to the image's original pixels. For each region the best-scoring detection is
kept; a region with no detection is a NaN row with score 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chextriev.anatomy.detector_nets import DetectorConfig, build_detector_network
from chextriev.errors import ChextrievError, DataFormatError
from chextriev.files import atomic_path
from chextriev.precision import autocast, resolve_precision
from chextriev.vocab import NUM_REGIONS

log = logging.getLogger(__name__)

DETECTOR_FORMAT = "chextriev-anatomy-detector"
DETECTOR_FORMAT_VERSION = 1


def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W)`` float image in ``[0, 1]`` -> ``(3, size, size)`` float32 tensor."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:  # tolerate (H, W, C) arrays: average the channels
        array = array.mean(axis=2)
    if array.ndim != 2:
        raise ValueError(f"images must be (H, W) arrays, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tensor[0].expand(3, size, size).contiguous()


def scale_factors(height: int, width: int, size: int) -> np.ndarray:
    """``(4,)`` factors that map boxes on the ``size`` grid to original pixels."""
    return np.array([width / size, height / size, width / size, height / size], dtype=np.float32)


def best_box_per_class(
    boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, num_regions: int = NUM_REGIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the best-scoring detection of each region class.

    Args:
        boxes: ``(K, 4)`` detections; labels: ``(K,)`` int, 1-based (0 = background);
        scores: ``(K,)``.
    Returns:
        ``(num_regions, 4)`` float32 boxes (NaN where the class has no detection) and
        ``(num_regions,)`` float32 scores (0 there).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    out_boxes = np.full((num_regions, 4), np.nan, dtype=np.float32)
    out_scores = np.zeros(num_regions, dtype=np.float32)
    for k in np.argsort(-scores, kind="stable"):
        region = int(labels[k]) - 1
        if 0 <= region < num_regions and np.isnan(out_boxes[region, 0]):
            out_boxes[region] = boxes[k]
            out_scores[region] = scores[k]
    return out_boxes, out_scores


class AnatomyDetector:
    """A trained region detector: ``predict(images) -> [(boxes (18,4), scores (18,))]``.

    ``precision`` (``auto``/``fp32``/``bf16``, :mod:`chextriev.precision`): the network runs
    under bf16 autocast for ``bf16`` (weights stay float32: box regression decodes in float32).
    """

    def __init__(self, config: DetectorConfig, network: torch.nn.Module | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32"):
        self.config = config
        self.network = network if network is not None else build_detector_network(config)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.network.to(self.device).eval()
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image ``(H, W)``: boxes ``(18, 4)`` in that image's pixels and scores ``(18,)``."""
        self.network.eval()
        size = self.config.image_size
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(images), batch_size):
            chunk = [np.asarray(image) for image in images[start : start + batch_size]]
            tensors = [image_to_tensor(image, size).to(self.device) for image in chunk]
            with autocast(self.precision, self.device):
                outputs = self.network(tensors)
            for image, output in zip(chunk, outputs, strict=True):
                boxes, scores = best_box_per_class(
                    output["boxes"].float().cpu().numpy(), output["labels"].cpu().numpy(),
                    output["scores"].float().cpu().numpy(), self.config.num_regions,
                )
                height, width = image.shape[:2]
                boxes = boxes * scale_factors(height, width, size)
                boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
                boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
                results.append((boxes.astype(np.float32), scores))
        return results

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write config + state dict (+ ``extra`` plain-data entries, e.g. the atlas) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": DETECTOR_FORMAT,
            "version": DETECTOR_FORMAT_VERSION,
            "config": asdict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "extra": {**self.extra, **extra},
        }
        return atomic_path(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             precision: str = "fp32") -> AnatomyDetector:
        """Rebuild a detector from a file written by :meth:`save` (needs nothing else)."""
        path = Path(path)
        if not path.is_file():
            raise ChextrievError(f"anatomy detector file not found: {path} (train one with `chextriev train-detector`)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
            raise DataFormatError(f"{path} is not a readable detector file: {error}") from None
        if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
            raise DataFormatError(f"{path} is not a chextriev anatomy detector (format {DETECTOR_FORMAT!r} expected)")
        if payload.get("version") != DETECTOR_FORMAT_VERSION:
            raise DataFormatError(f"{path}: detector format version {payload.get('version')} is not supported")
        config_dict = dict(payload["config"])
        config_dict["backbone_weights"] = None  # the state dict already holds the trained weights
        config = DetectorConfig(**config_dict)
        network = build_detector_network(config)
        network.load_state_dict(payload["state_dict"])
        detector = cls(config, network, device, precision)
        detector.extra = dict(payload.get("extra", {}))
        log.info("anatomy detector loaded from %s (%s, %d px)", path, config.backbone, config.image_size)
        return detector

    def __repr__(self) -> str:
        return f"AnatomyDetector(backbone={self.config.backbone!r}, image_size={self.config.image_size})"
