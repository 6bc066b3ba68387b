"""Training HAM (:mod:`chextriev.localization.ham`) on records: labels, and boxes where they exist.

:func:`train_ham` splits the records patient-disjointly (the records' own split, as
``chextriev train`` does), trains on ``train`` and keeps the epoch with the lowest validation
classification loss (labels only: selecting on boxes would favour HAM over the label-only
methods it is compared with). It writes ``OUT/best.pt`` and ``OUT/last.pt`` (atomically, every
epoch: a killed run keeps its last finished epoch) and ``OUT/history.csv``.

With a frozen trunk (the default) the trunk's feature maps of the training and validation
images are computed once and held in memory (``max_cache_bytes``, default 2 GiB; above it they
are recomputed every batch), so an epoch only runs the attention module and the heads: the
``synthetic-small`` preset trains on about 800 synthetic images in a few CPU minutes.

Boxes: ``box_truth(record) -> [(finding, (x1, y1, x2, y2))]`` in original pixels (default: the
record's ``meta["lesion_boxes"]``, as the NIH and CheXpert readers give them; the CLI reads a
synthetic archive's lesion truth). ``box_fraction`` of the training images that have boxes use
them (chosen by a hash of the image id); the rest, and every image without boxes, train on
their labels alone.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from chextriev.errors import DataFormatError, UnknownNameError
from chextriev.io.images import image_size as read_image_size
from chextriev.io.images import load_image
from chextriev.localization.ham import (
    LOSS_TERMS,
    HAMConfig,
    HAMNet,
    box_masks,
    ham_losses,
    save_ham,
)
from chextriev.model.heads import masked_bce
from chextriev.model.preprocess import prepare_image
from chextriev.records import Record
from chextriev.vocab import equivalent_findings

log = logging.getLogger(__name__)

BoxTruth = Callable[[Record], Sequence[tuple[str, Sequence[float]]]]


@dataclass(frozen=True)
class HAMPreset:
    """Optimisation settings and config overrides of one HAM training recipe."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int | None = None  # multiply the lr by lr_decay every lr_step epochs
    lr_decay: float = 0.1
    patience: int = 5  # stop after this many epochs without a better validation loss
    num_workers: int = 0  # image-reading processes


HAM_PRESETS: dict[str, HAMPreset] = {
    # tests: seconds on a CPU
    "tiny": HAMPreset("tiny", {"image_size": 64, "head_width": 32}, epochs=2, batch_size=8, lr=3e-3, patience=2),
    # the synthetic archive on a CPU: the same frozen random ResNet18 at 256 px as the
    # synthetic-small preset of `chextriev train`
    "synthetic-small": HAMPreset("synthetic-small", {"image_size": 256, "head_width": 128}, epochs=20,
                                 batch_size=32, lr=1e-3, patience=5),
    # the published recipe (ResNet50 fine-tuned from ImageNet weights, 512 px, Adam 2e-5, decay
    # x0.1 every 10 epochs, 30 epochs); the published downsampling of 8 needs dilated
    # convolutions, here the nearest the shared trunk gives is 16. Needs a GPU and
    # --backbone-weights.
    "published": HAMPreset("published", {"backbone": "resnet50", "image_size": 512, "head_width": 512,
                                         "feature_stride": 16, "train_backbone": True},
                           epochs=30, batch_size=24, lr=2e-5, lr_step=10, patience=30, num_workers=8),
}


def get_ham_preset(name: str, **overrides: Any) -> HAMPreset:
    if name not in HAM_PRESETS:
        raise UnknownNameError("HAM preset", name, HAM_PRESETS)
    return replace(HAM_PRESETS[name], **overrides)


@dataclass
class HAMTrainResult:
    best: Path
    last: Path
    best_epoch: int
    best_val_loss: float | None
    splits: dict[str, int]
    n_box_images: int
    history: list[dict[str, float]]
    seconds: float


def record_box_truth(record: Record) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The record's ``meta["lesion_boxes"]`` as ``(finding, box)`` pairs."""
    return [(b["finding"], tuple(b["box"])) for b in record.meta.get("lesion_boxes", [])]


def class_of(finding: str, class_names: Sequence[str]) -> int | None:
    """Index of ``finding`` in ``class_names``, by name or an equivalent name; ``None`` if none."""
    for name in equivalent_findings(finding):
        if name in class_names:
            return list(class_names).index(name)
    return None


def _fraction(key: str) -> float:
    return int(hashlib.sha256(f"ham-boxes:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _labels(record: Record, num_classes: int) -> np.ndarray:
    if record.labels is None:
        return np.full(num_classes, np.nan, np.float32)
    return np.asarray(record.labels, np.float32)


def model_boxes(record: Record, truth: BoxTruth, class_names: Sequence[str], size: int,
                unmapped: set[str]) -> list[tuple[int, tuple[float, float, float, float]]]:
    """``(class index, box in model-input pixels)`` of the record's true boxes."""
    items = list(truth(record))
    if not items:
        return []
    height, width = record.image_size or read_image_size(record.source)[:2]
    sx, sy = size / width, size / height
    out = []
    for finding, (x1, y1, x2, y2) in items:
        c = class_of(finding, class_names)
        if c is None:
            unmapped.add(finding)
            continue
        out.append((c, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)))
    return out


def trunk_signature(config: HAMConfig) -> tuple:
    """What a frozen trunk's feature map depends on (keys of a shared ``feature_store``)."""
    return (config.backbone, config.backbone_weights_format, config.backbone_weights, config.backbone_seed,
            config.feature_stride, config.image_size)


class _ImageSet(torch.utils.data.Dataset):
    """Prepared images ``(1, S, S)`` of records, by position (for worker processes)."""

    def __init__(self, records: Sequence[Record], size: int):
        self.records, self.size = list(records), size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return prepare_image(load_image(self.records[index].source), self.size), index


class _Data:
    """Images (or their cached trunk maps), labels and boxes of one split."""

    def __init__(self, model: HAMNet, records: Sequence[Record], boxes: list[list], cache: bool,
                 device: torch.device, progress: bool, name: str, store: dict | None = None, num_workers: int = 0):
        self.model, self.records, self.boxes, self.device = model, list(records), boxes, device
        self.labels = torch.from_numpy(np.stack([_labels(r, model.config.num_classes) for r in records]))
        self.images = _ImageSet(records, model.config.image_size)
        self.num_workers = num_workers
        self.maps: torch.Tensor | None = None
        if cache:
            store = {} if store is None else store
            signature = trunk_signature(model.config)
            missing = [i for i, r in enumerate(self.records) if (signature, r.image_id) not in store]
            for images, indices in tqdm(self._loader(missing, 32), desc=f"trunk features {name}", unit="batch",
                                        disable=not progress or not missing, leave=False):
                for i, fmap in zip(indices.tolist(), model.trunk_features(images.to(device)).cpu()):
                    store[(signature, self.records[i].image_id)] = fmap
            self.maps = torch.stack([store[(signature, r.image_id)] for r in self.records])

    def __len__(self) -> int:
        return len(self.records)

    def _loader(self, order: Sequence[int], batch_size: int) -> torch.utils.data.DataLoader:
        batches = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
        return torch.utils.data.DataLoader(self.images, batch_sampler=batches, num_workers=self.num_workers)

    def batches(self, order: Sequence[int], batch_size: int):
        """``(trunk maps or images, labels, boxes)`` per batch of ``order``; images when not cached."""
        if self.maps is not None:
            for start in range(0, len(order), batch_size):
                idx = list(order[start:start + batch_size])
                yield self.maps[idx].to(self.device), self.labels[idx].to(self.device), [self.boxes[i] for i in idx]
            return
        for images, indices in self._loader(order, batch_size):
            idx = indices.tolist()
            yield images.to(self.device), self.labels[idx].to(self.device), [self.boxes[i] for i in idx]


def _trunk(model: HAMNet, data: _Data, first: torch.Tensor) -> torch.Tensor:
    return first if data.maps is not None else model.trunk_features(first)


def _epoch(model: HAMNet, data: _Data, order: Sequence[int], batch_size: int,
           optimizer: torch.optim.Optimizer | None, progress: bool, desc: str) -> dict[str, float]:
    """One pass; trains when ``optimizer`` is given. Returns mean loss terms."""
    sums = dict.fromkeys((*LOSS_TERMS, "total"), 0.0)
    count = 0
    size = model.config.image_size
    model.train(optimizer is not None)
    with torch.set_grad_enabled(optimizer is not None):
        for first, labels, boxes in tqdm(data.batches(order, batch_size), desc=desc, unit="batch",
                                         total=math.ceil(len(order) / batch_size), disable=not progress, leave=False):
            if optimizer is not None and len(labels) < 2:
                continue  # batch norm needs two images
            output = model.forward_features(_trunk(model, data, first))
            masks, has = box_masks(boxes, model.config.num_classes, size, labels.device)
            terms = ham_losses(model, output, labels, masks if has.any() else None, has if has.any() else None)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                optimizer.step()
            n = len(labels)
            count += n
            for key in sums:
                sums[key] += float(terms[key].detach()) * n
    return {k: v / max(count, 1) for k, v in sums.items()}


@torch.no_grad()
def validation_loss(model: HAMNet, data: _Data, batch_size: int) -> float:
    """Masked classification BCE over ``data`` (what selects the best epoch)."""
    model.eval()
    total, count = 0.0, 0
    for first, labels, _ in data.batches(range(len(data)), batch_size):
        logits = model.forward_features(_trunk(model, data, first)).class_logits
        known = int((~torch.isnan(labels)).sum())
        total += float(masked_bce(logits, labels)) * known
        count += known
    return total / max(count, 1)


def train_ham(
    records: Sequence[Record],
    out: str | Path,
    *,
    preset: str = "synthetic-small",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    box_truth: BoxTruth | None = None,
    box_fraction: float = 1.0,
    device: str | torch.device = "cpu",
    max_cache_bytes: int = 2 << 30,
    feature_store: dict | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    **config_overrides: Any,
) -> HAMTrainResult:
    """Train a HAM network on ``records`` and write its checkpoints under ``out``.

    Args:
        records: labelled records (``class_names`` give the classes); their ``split`` decides
            train / validate (see :func:`chextriev.training.data.split_records`).
        preset: one of :data:`HAM_PRESETS`; ``epochs``, ``batch_size``, ``lr`` override it.
        box_truth: true boxes per record (default :func:`record_box_truth`).
        box_fraction: share of the training images with boxes that train with them (0: labels only).
        feature_store: a dict that keeps frozen trunk maps between calls (several runs on the
            same images compute them once); keyed by :func:`trunk_signature` and image id.
        num_workers: image-reading worker processes (default: the preset's).
        config_overrides: :class:`~chextriev.localization.ham.HAMConfig` fields (e.g.
            ``backbone_weights``, ``loss_remainder``, ``combine``).

    Raises:
        DataFormatError: no labelled training or validation image.
        UnknownNameError: an unknown preset or config value.
    """
    from chextriev.training.data import split_records  # the same patient-disjoint split as training

    start_time = time.monotonic()
    settings = get_ham_preset(preset)
    epochs = settings.epochs if epochs is None else int(epochs)
    batch_size = settings.batch_size if batch_size is None else int(batch_size)
    lr = settings.lr if lr is None else float(lr)
    if not 0.0 <= box_fraction <= 1.0:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
    labelled = [r for r in records if r.labels is not None and not np.isnan(r.labels).all()]
    if not labelled:
        raise DataFormatError("no labelled record to train HAM on")
    class_names = tuple(labelled[0].class_names)
    options = {**settings.config, **{k: v for k, v in config_overrides.items() if v is not None}}
    config = HAMConfig(class_names=class_names, **options)
    splits = split_records(labelled, seed=seed)
    train_records, val_records = splits["train"], splits["validate"]
    if not train_records or not val_records:
        raise DataFormatError(f"HAM needs training and validation images; got {len(train_records)} and "
                              f"{len(val_records)}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model = HAMNet(config).to(device)
    truth = box_truth or record_box_truth
    unmapped: set[str] = set()
    train_boxes = []
    for record in train_records:
        boxes = model_boxes(record, truth, class_names, config.image_size, unmapped) if box_fraction > 0 else []
        train_boxes.append(boxes if boxes and _fraction(record.image_id) < box_fraction else [])
    if unmapped:
        log.warning("box findings without a class of this model (not used): %s", sorted(unmapped))
    n_box_images = sum(bool(b) for b in train_boxes)
    trunk_bytes = 4 * config.trunk_channels * (config.image_size // config.feature_stride) ** 2
    cache = not config.train_backbone and trunk_bytes * (len(train_records) + len(val_records)) <= max_cache_bytes
    if not config.train_backbone and not cache:
        log.info("trunk features of %d images exceed max_cache_bytes: recomputed every batch",
                 len(train_records) + len(val_records))
    workers = settings.num_workers if num_workers is None else int(num_workers)
    train_data = _Data(model, train_records, train_boxes, cache, device, progress, "train", feature_store, workers)
    val_data = _Data(model, val_records, [[] for _ in val_records], cache, device, progress, "validate",
                     feature_store, workers)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, settings.lr_decay) if settings.lr_step \
        else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out / "best.pt", out / "last.pt"
    generator = torch.Generator().manual_seed(seed)
    notes = {"preset": settings.name, "seed": seed, "lr": lr, "batch_size": batch_size, "box_fraction": box_fraction,
             "n_box_images": n_box_images, "splits": {k: len(v) for k, v in splits.items()},
             "label_policy": sorted({r.meta.get("label_policy", "") for r in labelled} - {""})}
    log.info("HAM (%s): %d train (%d with boxes), %d validation images, %d classes, %d epochs",
             settings.name, len(train_records), n_box_images, len(val_records), len(class_names), epochs)
    history: list[dict[str, float]] = []
    best_loss, best_epoch, stale = math.inf, 0, 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_data), generator=generator).tolist()
        terms = _epoch(model, train_data, order, batch_size, optimizer, progress, f"HAM epoch {epoch}/{epochs}")
        val = validation_loss(model, val_data, batch_size)
        if scheduler is not None:
            scheduler.step()
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in terms.items()}, "val_cls": val}
        history.append(row)
        log.info("HAM epoch %d: train loss %.4f (cls %.4f, remainder %.4f, box %.4f), validation cls %.4f",
                 epoch, terms["total"], terms["cls"], terms["remainder"], terms["box"], val)
        save_ham(model, last_path, {**notes, "epoch": epoch, "val_cls": val})
        if val < best_loss:
            best_loss, best_epoch, stale = val, epoch, 0
            save_ham(model, best_path, {**notes, "epoch": epoch, "val_cls": val})
        else:
            stale += 1
            if stale >= settings.patience:
                log.info("HAM: no better validation loss for %d epochs; stopping", stale)
                break
    with open(out / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return HAMTrainResult(best_path, last_path, best_epoch, None if math.isinf(best_loss) else best_loss,
                          {k: len(v) for k, v in splits.items()}, n_box_images, history,
                          time.monotonic() - start_time)
