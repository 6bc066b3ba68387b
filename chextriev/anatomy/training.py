"""Training the anatomy detector from ImaGenome-format region boxes.

``train_detector(records, out_path, ...)`` loads each record's image with
:func:`chextriev.io.images.load_image`, resizes it once to ``image_size`` (kept in memory as
8-bit), and trains a Faster R-CNN (:mod:`chextriev.anatomy.detector_nets`) on the present
region boxes. Light geometric jitter (random scale and shift, never a left-right flip: the
regions are sided) is applied per step. The file written by :meth:`AnatomyDetector.save`
also carries the atlas fitted on the same records and the loss history.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from chextriev.anatomy.atlas import Atlas
from chextriev.anatomy.detector import AnatomyDetector, image_to_tensor
from chextriev.anatomy.detector_nets import DetectorConfig
from chextriev.errors import ChextrievError
from chextriev.records import Record

log = logging.getLogger(__name__)

#: Learning rates that train each backbone from random weights with AdamW.
DEFAULT_LR = {"small": 2e-3, "resnet18": 5e-4, "resnet50": 2e-4}


class RegionBoxSet:
    """Images resized to ``size`` (uint8 ``(N, size, size)``) and their region boxes on that grid.

    ``boxes[i]`` is ``(k_i, 4)`` float32 and ``labels[i]`` ``(k_i,)`` int64 (1-based region
    index) for the regions present in record ``i``.
    """

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray]):
        self.images = images
        self.boxes = boxes
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], size: int) -> RegionBoxSet:
        """From ``(H, W)`` images and their ``(18, 4)`` pixel boxes (NaN rows = missing)."""
        grid, kept_boxes, kept_labels = [], [], []
        for image, region_boxes in zip(images, boxes, strict=True):
            height, width = np.asarray(image).shape[:2]
            present = np.isfinite(region_boxes).all(axis=1)
            if not present.any():
                continue
            scale = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
            tensor = image_to_tensor(image, size)[0]
            grid.append((tensor.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
            kept_boxes.append((np.asarray(region_boxes, np.float32)[present] * scale).astype(np.float32))
            kept_labels.append(np.flatnonzero(present).astype(np.int64) + 1)
        if not grid:
            raise ChextrievError("no training image has region boxes; the detector needs ImaGenome-format boxes")
        return cls(np.stack(grid), kept_boxes, kept_labels)

    @classmethod
    def from_records(cls, records: Sequence[Record], size: int, loader: Callable | None = None) -> RegionBoxSet:
        """Load every record with boxes through ``loader`` (default ``load_image``)."""
        if loader is None:
            from chextriev.io.images import load_image as loader
        images, boxes = [], []
        for record in tqdm(records, desc="loading detector images", unit="img", leave=False):
            if record.boxes is None or not record.box_mask.any():
                continue
            image = loader(record.source)
            if record.image_size is not None and tuple(image.shape[:2]) != tuple(record.image_size):
                log.debug("%s: loaded %s, record says %s; boxes follow the record", record.image_id, image.shape, record.image_size)
                boxes.append(_rescale(record.boxes, record.image_size, image.shape[:2]))
            else:
                boxes.append(record.boxes)
            images.append(image)
        return cls.from_arrays(images, boxes, size)


def _rescale(boxes: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    (sh, sw), (dh, dw) = src, dst
    return boxes * np.array([dw / sw, dh / sh, dw / sw, dh / sh], dtype=np.float32)


def jitter(image: torch.Tensor, boxes: torch.Tensor, rng: random.Random, strength: float = 0.1):
    """Random zoom/shift of a ``(1, S, S)`` image and its ``(k, 4)`` boxes (same grid).

    A crop window of side ``S * u`` with ``u`` in ``[1 - strength, 1 + strength]`` is taken at
    a random offset (padding with 0 outside the image) and resized back to ``S``.
    """
    size = image.shape[-1]
    side = size * rng.uniform(1 - strength, 1 + strength)
    x0 = rng.uniform(min(0.0, size - side), max(0.0, size - side))
    y0 = rng.uniform(min(0.0, size - side), max(0.0, size - side))
    theta = torch.tensor([[side / size, 0, (2 * x0 + side) / size - 1], [0, side / size, (2 * y0 + side) / size - 1]],
                         dtype=torch.float32)[None]
    grid = torch.nn.functional.affine_grid(theta, (1, 1, size, size), align_corners=False)
    out = torch.nn.functional.grid_sample(image[None], grid, align_corners=False, padding_mode="zeros")[0]
    factor = size / side
    shifted = (boxes - torch.tensor([x0, y0, x0, y0])) * factor
    return out, shifted.clamp(0, size)


def _batch(data: RegionBoxSet, indices: Sequence[int], rng: random.Random, augment: bool, device: torch.device):
    images, targets = [], []
    for i in indices:
        image = torch.from_numpy(data.images[i]).float().div(255)[None]
        boxes = torch.from_numpy(data.boxes[i])
        labels = torch.from_numpy(data.labels[i])
        if augment:
            image, boxes = jitter(image, boxes, rng)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
            boxes, labels = boxes[keep], labels[keep]
        images.append(image.expand(3, -1, -1).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def fit_detector(
    detector: AnatomyDetector,
    data: RegionBoxSet,
    *,
    epochs: int,
    batch_size: int = 4,
    lr: float | None = None,
    augment: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``detector.network`` in place; returns the mean loss of each epoch.

    AdamW with a linear warm-up (first 5% of steps) and cosine decay; gradients clipped at 10.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    network, device = detector.network, detector.device
    lr = lr if lr is not None else DEFAULT_LR[detector.config.backbone]
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    history: list[float] = []
    network.train()
    bar = tqdm(total=total, desc="train-detector", unit="step", disable=not progress)
    start = time.time()
    for epoch in range(epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        losses = []
        for b in range(0, len(order), batch_size):
            images, targets = _batch(data, order[b : b + batch_size], rng, augment, device)
            loss_dict = network(images, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise ChextrievError(f"detector loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate (--lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        history.append(float(np.mean(losses)))
        log.info("detector epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, epochs, history[-1], time.time() - start)
    bar.close()
    network.eval()
    return history


def train_detector(
    records: Sequence[Record],
    out_path: str | Path,
    *,
    epochs: int = 20,
    image_size: int = 512,
    backbone: str = "resnet50",
    batch_size: int = 4,
    device: str = "cpu",
    lr: float | None = None,
    backbone_weights: str | None = None,
    seed: int = 0,
    augment: bool = True,
    loader: Callable | None = None,
) -> Path:
    """Train an anatomy detector on the region boxes of ``records`` and write it to ``out_path``.

    The file holds the detector config, its weights, the atlas fitted on ``records`` (key
    ``extra["atlas"]``) and the per-epoch losses. Returns ``out_path``.
    """
    config = DetectorConfig(backbone=backbone, image_size=image_size, backbone_weights=backbone_weights)
    torch.manual_seed(seed)
    detector = AnatomyDetector(config, device=device)
    data = RegionBoxSet.from_records(records, image_size, loader)
    log.info("training %s detector on %d images at %d px for %d epochs on %s", backbone, len(data), image_size, epochs, device)
    history = fit_detector(detector, data, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, seed=seed)
    atlas = Atlas.fit(records)
    return detector.save(out_path, atlas=atlas.to_dict(), loss_history=history, train_images=len(data))
