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
from chextriev.training.feature_cache import FeatureCache, config_signature
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


def input_bytes(config: ModelConfig) -> int:
    """Bytes of one prepared float32 model input of ``config``."""
    if config.crops_original:
        return 4 * 18 * config.crop_size**2
    return 4 * config.image_size**2


class ImageDataset(Dataset):
    """Model inputs (:func:`chextriev.model.preprocess.prepare_input`: the ``image_size`` image,
    or in crop mode the crops of the original) with model-input boxes and labels.

    With ``keep_inputs`` the prepared inputs stay in memory after the first epoch (the same
    tensors, so the same training; ATH decodes and resizes each image once instead of once per
    epoch). :class:`RetrievalDataModule` asks for it when the whole split fits in
    :data:`INPUT_CACHE_BYTES` and the loader runs in the main process.
    """

    def __init__(self, records: Sequence[Record], config: ModelConfig, atlas: Atlas, keep_inputs: bool = False):
        self.records = list(records)
        self.config = config
        self.atlas = atlas
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if keep_inputs else None

    def __len__(self) -> int:
        return len(self.records)

    def _inputs(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kept is not None and index in self.kept:
            return self.kept[index]
        record = self.records[index]
        image = load_image(record.source)
        prepared = prepare_input(self.config, image, record_boxes(record, self.atlas, image.shape))
        if self.kept is not None:
            self.kept[index] = prepared
        return prepared

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        inputs, boxes = self._inputs(index)
        labels, region = label_arrays(record, self.config.num_classes)
        return {"image": inputs, "boxes": boxes,
                "labels": torch.from_numpy(labels), "region_labels": torch.from_numpy(region),
                "index": torch.tensor(index)}


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


@torch.inference_mode()
def cache_features(model, records: Sequence[Record], atlas: Atlas, cache: FeatureCache,
                   batch_size: int = 16, device: str | torch.device = "cpu",
                   desc: str = "features") -> FeatureDataset:
    """Compute (or reuse) ``model.extract`` features of ``records``; returns a :class:`FeatureDataset`."""
    config: ModelConfig = model.config
    signature = config_signature(config)
    keys, masks, original_boxes = [], [], []
    hashes = cache.content_hashes(record.source for record in records)  # memoised: no re-read per start
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
            inputs, boxes = extractor.prepare_batch([load_image(records[i].source) for i in chunk],
                                                    [original_boxes[i] for i in chunk])
            out.append(extractor.extract(inputs.to(device), boxes.to(device)).float().cpu())
        return torch.cat(out).numpy()

    cache.ensure(keys, compute)
    return FeatureDataset(records, keys, np.stack(masks) if masks else np.zeros((0, NUM_REGIONS), bool),
                          cache, config.num_classes)


class RetrievalDataModule(pl.LightningDataModule):
    """Train / validate / test loaders over records, with cached features when the backbone is frozen."""

    def __init__(self, splits: dict[str, list[Record]], model, atlas: Atlas, batch_size: int = 16,
                 num_workers: int = 0, cache: FeatureCache | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.splits, self.model, self.atlas = splits, model, atlas
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache, self.device = cache, device
        self.datasets: dict[str, Dataset] = {}

    @property
    def uses_features(self) -> bool:
        return self.cache is not None and self.model.config.cacheable

    def setup(self, stage: str | None = None) -> None:
        for name, records in self.splits.items():
            if name in self.datasets or not records:
                continue
            if self.uses_features:
                self.datasets[name] = cache_features(self.model, records, self.atlas, self.cache,
                                                     device=self.device, desc=f"features {name}")
            else:
                keep = self.num_workers == 0 and len(records) * input_bytes(self.model.config) <= INPUT_CACHE_BYTES
                self.datasets[name] = ImageDataset(records, self.model.config, self.atlas, keep_inputs=keep)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            raise DataFormatError(f"no records in the {name} split")
        return DataLoader(self.datasets[name], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validate", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def feature_statistics(dataset: FeatureDataset, max_items: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(F,)`` of cached features over present regions.

    Uses at most ``max_items`` images (a seeded random subset) so that large archives stay cheap.
    """
    order = np.random.default_rng(seed).permutation(len(dataset))[:max_items]
    rows = []
    for i in order:
        item = dataset[int(i)]
        features = item["features"]
        rows.append(features[item["mask"]] if features.ndim == 2 else features[None])
    stacked = torch.cat(rows).double()
    return stacked.mean(dim=0).float(), stacked.std(dim=0).float()
