"""Train one variant: records -> splits -> atlas + adjacency -> model -> Lightning fit.

:func:`train_records` is the library entry point (``chextriev train`` and
``scripts/train_all_variants.py`` call it); it writes under ``out``:
``best.ckpt`` (best validation mAP@10), ``last.ckpt``, ``logs/`` (CSV) and ``tb/``
(TensorBoard), and returns a :class:`TrainResult`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from chextriev.anatomy.atlas import Atlas
from chextriev.errors import DataFormatError
from chextriev.model.adjacency import as_tuple, cooccurrence_adjacency
from chextriev.model.config import get_config
from chextriev.records import Record
from chextriev.training.data import RetrievalDataModule, feature_statistics, split_records
from chextriev.training.feature_cache import FeatureCache
from chextriev.training.module import MONITOR, RetrievalModule
from chextriev.training.presets import get_preset

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best: Path  # best.ckpt
    last: Path  # last.ckpt
    out: Path
    best_score: float | None  # validation mAP@10 of best.ckpt
    splits: dict[str, int]  # records per split


def resolve_config(variant: str, preset_model: dict[str, Any], class_names: Sequence[str],
                   adjacency, **overrides: Any):
    """The variant's config with the preset's model overrides, the data's class list and adjacency."""
    options = dict(preset_model)
    base = get_config(variant)
    if base.kind == "ath":  # ATH works on the whole image at (at most) 256 px, as published
        options["image_size"] = min(options.get("image_size", base.image_size), base.image_size)
    options.update({k: v for k, v in overrides.items() if v is not None})
    options["class_names"] = tuple(class_names)
    options["adjacency"] = as_tuple(adjacency)
    return get_config(variant, **options)


def selection_metric(config) -> tuple[str, str]:
    """What selects the best checkpoint and stops training: validation mAP@10 (max), except for
    the published global baseline, whose embedding is the frozen backbone feature (mAP cannot
    change with training): there the validation loss of its classification head (min)."""
    if config.kind == "global" and config.global_embedding == "backbone" and not config.train_backbone:
        return "val_loss", "min"
    return MONITOR, "max"


def fit_feature_stats(model, data: RetrievalDataModule) -> bool:
    """Fit the frozen features' standardisation on the training split (cached features only).

    Random or ImageNet features have large per-channel offsets next to small between-image
    differences; a fixed standardisation (saved with the model) lets the projection learn.
    Returns False (identity kept) when the backbone trains or features are not cached.
    """
    target = model.feature_module()
    if target is None or not data.uses_features:
        return False
    data.setup("fit")
    mean, std = feature_statistics(data.datasets["train"])
    target.set_feature_stats(mean, std)
    return True


def _accelerator(devices: Any) -> str:
    return "gpu" if torch.cuda.is_available() and devices not in (0, "0", "cpu") else "cpu"


def train_records(records: Sequence[Record], out: str | Path, *, variant: str = "v6", preset: str = "synthetic-small",
                  max_epochs: int | None = None, backbone_weights: str | None = None,
                  train_backbone: bool = False, seed: int = 0, devices: Any = "auto",
                  strategy: str = "auto", precision: str | None = None, cache_dir: str | Path | None = None,
                  batch_size: int | None = None, lr: float | None = None, progress: bool = True,
                  model_overrides: dict[str, Any] | None = None) -> TrainResult:
    """Train ``variant`` with ``preset`` on ``records`` (patient-disjoint splits from ``split``)."""
    settings = get_preset(preset)
    if max_epochs is not None:
        settings = replace(settings, max_epochs=int(max_epochs))
    if batch_size is not None:
        settings = replace(settings, batch_size=int(batch_size))
    if lr is not None:
        settings = replace(settings, lr=float(lr))
    records = list(records)
    if not records:
        raise DataFormatError("no records to train on")
    class_names = records[0].class_names
    if not class_names:
        raise DataFormatError("records carry no class names: training needs labelled records")
    splits = split_records(records, seed=seed)
    if not splits["train"] or not splits["validate"]:
        raise DataFormatError(f"need training and validation records, got {[(k, len(v)) for k, v in splits.items()]}")
    pl.seed_everything(seed, workers=True)
    atlas = Atlas.fit(splits["train"])
    adjacency = cooccurrence_adjacency(r.region_labels for r in splits["train"])
    config = resolve_config(variant, settings.model, class_names, adjacency,
                            backbone_weights=backbone_weights, **({"train_backbone": True} if train_backbone else {}),
                            **(model_overrides or {}))
    monitor, mode = selection_metric(config)
    module = RetrievalModule(
        model_config=config.to_dict(), variant=variant, preset=preset, class_names=list(class_names),
        image_size=config.image_size, atlas=atlas.to_dict(), adjacency=[list(r) for r in config.adjacency],
        lr=settings.lr, weight_decay=settings.weight_decay, plateau_patience=settings.plateau_patience,
        plateau_factor=settings.plateau_factor, val_k=settings.val_k, monitor=monitor, monitor_mode=mode,
    )
    accelerator = _accelerator(devices)
    if precision is None:
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    cache = FeatureCache(cache_dir) if settings.cache_features and config.cacheable else None
    data = RetrievalDataModule(splits, module.model, atlas, batch_size=settings.batch_size,
                               num_workers=settings.num_workers, cache=cache,
                               device="cuda" if accelerator == "gpu" else "cpu")
    fit_feature_stats(module.model, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode=mode, save_last=True,
                                 save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = [checkpoint, EarlyStopping(monitor=monitor, mode=mode, patience=settings.patience)]
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")]
    callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = pl.Trainer(
        default_root_dir=out, max_epochs=settings.max_epochs, accelerator=accelerator,
        devices=devices if accelerator == "gpu" else 1, strategy=strategy if accelerator == "gpu" else "auto",
        precision=precision, accumulate_grad_batches=settings.accumulate, callbacks=callbacks, logger=loggers,
        enable_progress_bar=progress, log_every_n_steps=5, deterministic=False, num_sanity_val_steps=0,
        enable_model_summary=progress,
    )
    log.info("training %s (%s preset) on %d train / %d validate / %d test records -> %s", variant, preset,
             len(splits["train"]), len(splits["validate"]), len(splits["test"]), out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer.fit(module, datamodule=data)
    best = out / "best.ckpt"
    last = out / "last.ckpt"
    score = checkpoint.best_model_score
    if cache is not None:
        log.info("feature cache %s: %d hits, %d computed", cache.directory, cache.hits, cache.misses)
    return TrainResult(best=best, last=last, out=out, best_score=float(score) if score is not None else None,
                       splits={k: len(v) for k, v in splits.items()})


def train(data: str | Path, out: str | Path, **options: Any) -> TrainResult:
    """Load the records of ``data`` (any layout ``load_records`` reads) and :func:`train_records`."""
    from chextriev.io.datasets import load_records

    return train_records(load_records(data), out, **options)
