"""Training data: patient-disjoint splits, image and cached-feature datasets, the DataModule.

Two dataset kinds, chosen by :class:`RetrievalDataModule`:

* :class:`FeatureDataset` (frozen backbone): backbone features computed once per image by the
  model's own ``extract`` and stored in the :class:`FeatureCache`; items hold ``features``,
  ``mask``, ``labels``, ``region_labels``, ``index``. The cache keys need each image's content
  hash, taken from the cache's memo (path, size, mtime) so a training start does not re-read
  files already hashed;
* :class:`ImageDataset` (ATH, ``--train-backbone``): items hold ``image`` (the model input:
  ``(1, S, S)``, or the region crops ``(18, 1, C, C)`` of the original in crop mode),
  ``boxes (18, 4)`` model-input pixels, ``labels``, ``region_labels``, ``index``.

Labels are ``(C,)`` and region labels ``(18, C)`` float32 with NaN where unknown (ignored by
the loss and never queries). Records without boxes get the atlas's boxes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from chextriev.anatomy.atlas import Atlas
from chextriev.errors import DataFormatError
from chextriev.io.images import image_size as read_image_size
from chextriev.io.images import load_image
from chextriev.model.config import ModelConfig
from chextriev.model.preprocess import input_boxes, prepare_input
from chextriev.model.tensors import box_mask
from chextriev.records import Record
from chextriev.training.augment import AugmentConfig, Augmenter, base_side
from chextriev.training.feature_cache import FeatureCache, config_signature
from chextriev.training.shards import (
    ShardStream,
    is_shard_record,
    read_shard_image,
    shrink_with_boxes,
)
from chextriev.vocab import NUM_REGIONS

log = logging.getLogger(__name__)

SPLITS = ("train", "validate", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                  "valid": "validate", "validation": "validate", "test": "test", "testing": "test"}


def _fraction(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_records(records: Sequence[Record], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0) -> dict[str, list[Record]]:
    """Patient-disjoint ``train`` / ``validate`` / ``test`` lists.

    The record's ``split`` field is used when set (``val``/``valid`` mean ``validate``);
    records without one are assigned by a hash of their patient id (image id when unknown).
    When no record is in ``validate``, ``val_fraction`` of the training patients become it.

    Raises:
        DataFormatError: a patient appears in two splits.
    """
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        patient = record.patient_id or record.image_id
        split = _SPLIT_ALIASES.get(str(record.split).lower()) if record.split else None
        if split is None:
            u = _fraction(patient, seed)
            split = "test" if u < test_fraction else "validate" if u < test_fraction + val_fraction else "train"
        out[split].append(record)
    if not out["validate"] and out["train"]:
        keep = []
        for record in out["train"]:
            patient = record.patient_id or record.image_id
            (out["validate"] if _fraction(patient, seed + 1) < val_fraction else keep).append(record)
        out["train"] = keep
    seen: dict[str, str] = {}
    for split, items in out.items():
        for record in items:
            if record.patient_id is None:
                continue
            other = seen.setdefault(record.patient_id, split)
            if other != split:
                raise DataFormatError(
                    f"patient {record.patient_id} is in both {other} and {split}: splits must be "
                    "patient-disjoint (fix the split column, or clear it to let chextriev split by patient)"
                )
    return out


def label_arrays(record: Record, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(C,)`` and ``(18, C)`` float32 labels, NaN where unknown."""
    labels = record.labels if record.labels is not None else np.full(num_classes, np.nan, np.float32)
    region = record.region_labels if record.region_labels is not None else np.full(
        (NUM_REGIONS, num_classes), np.nan, np.float32)
    return np.asarray(labels, np.float32), np.asarray(region, np.float32)


def record_shape(record: Record) -> tuple[int, int]:
    """``(H, W)`` of the record's image (from the record, else read from the file header)."""
    if record.image_size is not None:
        return int(record.image_size[0]), int(record.image_size[1])
    return tuple(int(v) for v in read_image_size(record.source))[:2]  # type: ignore[return-value]


def record_boxes(record: Record, atlas: Atlas, shape: tuple[int, int]) -> np.ndarray:
    """The record's ``(18, 4)`` boxes, or the atlas's for its image size when it has none."""
    if record.boxes is not None and box_mask(torch.from_numpy(record.boxes)).any():
        return record.boxes
    return atlas.boxes_for(*shape)


#: Decoded model inputs an :class:`ImageDataset` keeps in memory at most (bytes).
INPUT_CACHE_BYTES = 1 << 30


def input_bytes(config: ModelConfig, augment: AugmentConfig | None = None) -> int:
    """Bytes of one prepared float32 model input of ``config`` (with ``augment``: of one kept
    base image, see :class:`ImageDataset`)."""
    if augment is not None and augment.enabled and not config.crops_original:
        return 4 * base_side(config.image_size, augment) ** 2
    if config.crops_original:
        return 4 * 18 * config.crop_size**2
    return 4 * config.image_size**2


def read_record_image(record: Record) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: the record's image (a shard record's stored image, see
    :mod:`chextriev.training.shards`, else :func:`chextriev.io.images.load_image`)."""
    if is_shard_record(record):
        return read_shard_image(record)
    return load_image(record.source)


class ImageDataset(Dataset):
    """Model inputs (:func:`chextriev.model.preprocess.prepare_input`: the ``image_size`` image,
    or in crop mode the crops of the original) with model-input boxes and labels.

    With ``keep_inputs`` the prepared inputs stay in memory after the first epoch (the same
    tensors, so the same training; ATH decodes and resizes each image once instead of once per
    epoch). :class:`RetrievalDataModule` asks for it when the whole split fits in
    :data:`INPUT_CACHE_BYTES` and the loader runs in the main process.

    With ``augment`` (an enabled :class:`~chextriev.training.augment.AugmentConfig`) every item
    is a new random augmentation of the image (:class:`~chextriev.training.augment.Augmenter`,
    boxes and region labels transformed with it) before ``prepare_input`` (without the centre
    crop: the random crop replaces it); ``keep_inputs`` then keeps the decoded images, shrunk
    for ``roi``/global models to :func:`~chextriev.training.augment.base_side` pixels.
    """

    def __init__(self, records: Sequence[Record], config: ModelConfig, atlas: Atlas, keep_inputs: bool = False,
                 augment: AugmentConfig | None = None):
        self.records = list(records)
        self.config = config
        self.atlas = atlas
        self.augmenter = Augmenter(augment, config.class_names) if augment is not None and augment.enabled else None
        self.kept: dict[int, tuple] | None = {} if keep_inputs else None

    def __len__(self) -> int:
        return len(self.records)

    def _base(self, index: int, image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The (shrunk) decoded image and its boxes, before augmentation."""
        if self.kept is not None and index in self.kept:
            return self.kept[index]
        record = self.records[index]
        image = read_record_image(record) if image is None else image
        boxes = record_boxes(record, self.atlas, image.shape)
        if not self.config.crops_original:
            image, boxes = shrink_with_boxes(image, boxes, base_side(self.config.image_size, self.augmenter.config))
        if self.kept is not None:
            self.kept[index] = (image, boxes)
        return image, boxes

    def _inputs(self, index: int, image: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kept is not None and index in self.kept:
            return self.kept[index]
        record = self.records[index]
        image = read_record_image(record) if image is None else image
        prepared = prepare_input(self.config, image, record_boxes(record, self.atlas, image.shape))
        if self.kept is not None:
            self.kept[index] = prepared
        return prepared

    def item(self, index: int, image: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Item ``index`` (``image``: its decoded image when the caller has read it already)."""
        record = self.records[index]
        labels, region = label_arrays(record, self.config.num_classes)
        if self.augmenter is not None:
            base, boxes = self._base(index, image)
            augmented, boxes, region = self.augmenter(base, boxes, region, labels, record.meta)
            inputs, boxes = prepare_input(self.config, augmented, boxes, apply_center_crop=False)
        else:
            inputs, boxes = self._inputs(index, image)
        return {"image": inputs, "boxes": boxes,
                "labels": torch.from_numpy(labels), "region_labels": torch.from_numpy(region),
                "index": torch.tensor(index)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index)


class FeatureDataset(Dataset):
    """Cached backbone features (see :func:`cache_features`) with mask and labels."""

    def __init__(self, records: Sequence[Record], keys: Sequence[str], masks: np.ndarray,
                 cache: FeatureCache, num_classes: int):
        self.records, self.keys, self.masks, self.cache = list(records), list(keys), masks, cache
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        features = self.cache.get(self.keys[index])
        if features is None:
            raise DataFormatError(f"feature cache entry vanished for {self.records[index].image_id}: rerun training")
        labels, region = label_arrays(self.records[index], self.num_classes)
        return {"features": torch.from_numpy(features), "mask": torch.from_numpy(self.masks[index]),
                "labels": torch.from_numpy(labels), "region_labels": torch.from_numpy(region),
                "index": torch.tensor(index)}


def content_hashes(cache: FeatureCache, records: Sequence[Record]) -> list[str]:
    """Content hash of each record's image: a shard record's from the shard index (the stored
    image's sha256), the others from the cache's memo (no re-read per training start)."""
    out: list[str | None] = [r.meta["shard"]["sha256"] if is_shard_record(r) else None for r in records]
    files = [i for i, value in enumerate(out) if value is None]
    for i, value in zip(files, cache.content_hashes(records[i].source for i in files)):
        out[i] = value
    return out  # type: ignore[return-value]


@torch.inference_mode()
def cache_features(model, records: Sequence[Record], atlas: Atlas, cache: FeatureCache,
                   batch_size: int = 16, device: str | torch.device = "cpu",
                   desc: str = "features") -> FeatureDataset:
    """Compute (or reuse) ``model.extract`` features of ``records``; returns a :class:`FeatureDataset`."""
    config: ModelConfig = model.config
    signature = config_signature(config)
    keys, masks, original_boxes = [], [], []
    hashes = content_hashes(cache, records)
    for record, image_hash in zip(records, hashes):
        shape = record_shape(record)
        boxes = record_boxes(record, atlas, shape)
        model_boxes = input_boxes(config, boxes, shape)
        keys.append(FeatureCache.key(image_hash, signature, None if config.kind == "global" else model_boxes))
        masks.append(~np.isnan(model_boxes).any(axis=1))
        original_boxes.append(boxes)

    def compute(indices: list[int]) -> np.ndarray:
        extractor = model.to(device).eval()
        out = []
        for start in tqdm(range(0, len(indices), batch_size), desc=desc, unit="batch", leave=False):
            chunk = indices[start:start + batch_size]
            # the model's own input: resized image, or (crop mode) the crops of the original
            inputs, boxes = extractor.prepare_batch([read_record_image(records[i]) for i in chunk],
                                                    [original_boxes[i] for i in chunk])
            out.append(extractor.extract(inputs.to(device), boxes.to(device)).float().cpu())
        return torch.cat(out).numpy()

    cache.ensure(keys, compute)
    return FeatureDataset(records, keys, np.stack(masks) if masks else np.zeros((0, NUM_REGIONS), bool),
                          cache, config.num_classes)


class RetrievalDataModule(pl.LightningDataModule):
    """Train / validate / test loaders over records, with cached features when the backbone is frozen.

    ``augment`` (an enabled :class:`~chextriev.training.augment.AugmentConfig`) augments the
    training split: its inputs change every epoch, so it is read as images (an
    :class:`ImageDataset`) even when the backbone is frozen, and the backbone runs on every
    training batch; validation and test stay un-augmented (and cached). Shard records
    (:func:`chextriev.training.shards.load_shard_records`) read as images are streamed shard by
    shard (:class:`~chextriev.training.shards.ShardStream`) unless the split fits in memory or
    several processes train.
    """

    def __init__(self, splits: dict[str, list[Record]], model, atlas: Atlas, batch_size: int = 16,
                 num_workers: int = 0, cache: FeatureCache | None = None, device: str | torch.device = "cpu",
                 augment: AugmentConfig | None = None, seed: int = 0):
        super().__init__()
        self.splits, self.model, self.atlas = splits, model, atlas
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache, self.device = cache, device
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.datasets: dict[str, Dataset] = {}
        self._features: dict[str, FeatureDataset] = {}

    @property
    def uses_features(self) -> bool:
        return self.cache is not None and self.model.config.cacheable

    def augmented(self, name: str) -> bool:
        return name == "train" and self.augment is not None

    def feature_dataset(self, name: str) -> FeatureDataset:
        """The cached (un-augmented) features of split ``name`` (also for an augmented training
        split: the feature standardisation is fitted on them)."""
        if not self.uses_features:
            raise DataFormatError("no frozen-feature cache: this model's features are not cached")
        if name not in self._features:
            self._features[name] = cache_features(self.model, self.splits[name], self.atlas, self.cache,
                                                  device=self.device, desc=f"features {name}")
        return self._features[name]

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        for name, records in self.splits.items():
            if name in self.datasets or not records:
                continue
            augmented = self.augmented(name)
            if self.uses_features and not augmented:
                self.datasets[name] = self.feature_dataset(name)
                continue
            if augmented and self.uses_features:
                log.info("augmentation %r: the training split is read as images every epoch (augmented inputs "
                         "cannot come from the frozen-feature cache; the backbone runs on every training batch); "
                         "validation and test are not augmented and use the cache", self.augment.name)
            keep = (self.num_workers == 0
                    and len(records) * input_bytes(self.model.config, self.augment if augmented else None)
                    <= INPUT_CACHE_BYTES)
            dataset = ImageDataset(records, self.model.config, self.atlas, keep_inputs=keep,
                                   augment=self.augment if augmented else None)
            if not keep and name == "train" and self._world_size() == 1 and all(map(is_shard_record, records)):
                log.info("training split streamed from %d shard files", len({r.meta["shard"]["path"] for r in records}))
                self.datasets[name] = ShardStream(records, dataset.item, seed=self.seed)
            else:
                self.datasets[name] = dataset

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise DataFormatError(f"no records in the {name} split")
        dataset = self.datasets[name]
        streamed = isinstance(dataset, ShardStream)  # shuffles itself
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and not streamed,
                          num_workers=self.num_workers, drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validate", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def feature_statistics(dataset: FeatureDataset, max_items: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(F,)`` of cached features over present regions (over every
    location for a global feature map).

    Uses at most ``max_items`` images (a seeded random subset) so that large archives stay cheap.
    """
    order = np.random.default_rng(seed).permutation(len(dataset))[:max_items]
    rows = []
    for i in order:
        item = dataset[int(i)]
        features = item["features"]
        if features.ndim == 3:  # a global feature map (F, h, w): every location is a row
            rows.append(features.flatten(1).T)
        else:
            rows.append(features[item["mask"]] if features.ndim == 2 else features[None])
    stacked = torch.cat(rows).double()
    return stacked.mean(dim=0).float(), stacked.std(dim=0).float()
