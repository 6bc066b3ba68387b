"""Train one variant: records -> splits -> atlas + adjacency -> model -> Lightning fit.

:func:`train_records` is the library entry point (``chextriev train`` and
``benchmarks/train_all_variants.py`` call it); it writes under ``out``:
``best.ckpt`` (best validation mAP@10), ``last.ckpt``, ``logs/`` (CSV) and ``tb/``
(TensorBoard), and returns a :class:`TrainResult`. Every checkpoint holds the split the run
made, by patient and seed (:mod:`chextriev.splits`), which ``chextriev evaluate`` applies.

Processes: one on CPU by default. ``devices=N`` (N > 1) without a GPU trains in N CPU
processes with ``ddp_spawn`` (gloo backend; validation mAP@10 on the gathered whole set, see
:mod:`chextriev.training.module`), tested in ``tests/training/test_model_ddp.py``; on GPUs
``devices`` / ``strategy`` go to Lightning as given (``auto`` on several GPUs: ``ddp``), a path
not tested here. See :func:`trainer_devices`.
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
from chextriev.model.config import ENCODER_NAMES, XRV_INPUT_SIZE, get_config
from chextriev.model.encoders.table import input_side
from chextriev.records import Record
from chextriev.splits import split_entry
from chextriev.training.augment import get_augmentation
from chextriev.training.data import RetrievalDataModule, feature_statistics, split_records
from chextriev.training.feature_cache import FeatureCache
from chextriev.training.module import MONITOR, RetrievalModule
from chextriev.training.presets import get_preset
from chextriev.training.shards import is_shard_dir, load_shard_records

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
    if overrides.get("backbone_weights_format") == "xrv" and base.uses_backbone:
        # torchxrayvision's weights take 224 px inputs: the preset's input side gives way
        side = "crop_size" if base.has_regions and options.get("feature_mode", base.feature_mode) == "crop" \
            else "image_size"
        if options.get(side, getattr(base, side)) != XRV_INPUT_SIZE:
            log.info("xrv backbone weights: %s %s -> %d", side, options.get(side, getattr(base, side)), XRV_INPUT_SIZE)
        options[side] = XRV_INPUT_SIZE
    options.update({k: v for k, v in overrides.items() if v is not None})
    backbone = options.get("backbone", base.backbone)
    if base.uses_backbone and backbone in ENCODER_NAMES:
        # a foundation encoder: read its files (never a download), take its native input side and
        # pool the regions from its patch tokens (roi), whatever the preset says
        from chextriev.model.encoders.files import resolve_encoder

        found = resolve_encoder(backbone, options.get("backbone_weights"), seed=int(options.get("backbone_seed", 0)),
                                with_text=False)
        options["encoder"] = found.spec
        side = input_side(found.spec["input"])
        if options.get("image_size", base.image_size) != side or options.get("feature_mode", base.feature_mode) != "roi":
            log.info("encoder %s: image_size %s -> %d (its input), feature_mode %s -> roi (its patch tokens)",
                     backbone, options.get("image_size", base.image_size), side,
                     options.get("feature_mode", base.feature_mode))
        options["image_size"] = side
        options["feature_mode"] = "roi"
    options["class_names"] = tuple(class_names)
    options["adjacency"] = as_tuple(adjacency)
    return get_config(variant, **options)


def selection_metric(config) -> tuple[str, str]:
    """What selects the best checkpoint and stops training: validation mAP@10 (max), except for
    the published global baseline, whose embedding is the frozen backbone feature (mAP cannot
    change with training): there the validation loss of its classification head (min). The
    same holds for the whole global classifier family (any pooling, attention map): a classifier
    whose embedding is a by-product of its pooling (with PCAM or an attention map it moves with
    training, but what trains is the classifier; selected on mAP, PCAM stopped at its first
    epochs, before it classified: ``chextriev/model/README.md`` point 17)."""
    if config.kind == "global" and config.global_embedding == "backbone" and not config.train_backbone:
        return "val_loss", "min"
    return MONITOR, "max"


def fit_feature_stats(model, data: RetrievalDataModule) -> bool:
    """Fit the frozen features' standardisation on the training split (cached features only).

    Random or ImageNet features have large per-channel offsets next to small between-image
    differences; a fixed standardisation (saved with the model) lets the projection learn.
    The scale is floored at 1e-3 (:func:`chextriev.model.region_features.feature_scale`,
    through ``set_feature_stats``).
    Returns False (identity kept) when the backbone trains or features are not cached.
    """
    target = model.feature_module()
    if target is None or not data.uses_features:
        return False
    # the un-augmented cached features (an augmented training split is read as images)
    mean, std = feature_statistics(data.feature_dataset("train"))
    target.set_feature_stats(mean, std)
    return True


def _accelerator(devices: Any) -> str:
    return "gpu" if torch.cuda.is_available() and devices not in (0, "0", "cpu") else "cpu"


CPU_DDP_STRATEGY = "ddp_spawn_find_unused_parameters_true"  # gloo; spawned workers: the caller is not re-run
# A guard: every variant of the table reaches all its parameters (one shared head), but a custom
# config may hold parameters its loss never reaches, which plain DDP rejects at the first step.
_FIND_UNUSED = {name: f"{name}_find_unused_parameters_true" for name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")}


def _process_count(devices: Any, gpu: bool) -> int:
    """How many processes ``devices`` asks for (CPU: an int or digit string > 1, else 1)."""
    if isinstance(devices, bool):
        return 1
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            devices = [v for v in text.split(",") if v.strip()]
        elif text.lstrip("-").isdigit():
            devices = int(text)
        else:  # "auto", "cpu"
            return torch.cuda.device_count() if gpu and text == "auto" else 1
    if isinstance(devices, (list, tuple)):
        return len(devices) if gpu else 1
    if isinstance(devices, int):
        return torch.cuda.device_count() if gpu and devices == -1 else max(devices, 1)
    return 1


def trainer_devices(accelerator: str, devices: Any, strategy: str | None) -> tuple[Any, str]:
    """``(devices, strategy)`` for the Trainer.

    CPU: one process (``devices`` 1, strategy ``auto``) unless ``devices`` is a count > 1,
    which runs that many processes with ``ddp_spawn`` (gloo backend) when ``strategy`` is
    ``auto``; an explicit strategy is passed through, with ``devices`` as the process count.
    GPU: ``devices`` passed through; ``auto`` on more than one GPU becomes ``ddp``.
    Plain ``ddp``/``ddp_spawn``/``ddp_fork``/``ddp_notebook`` get ``find_unused_parameters``.
    """
    gpu = accelerator == "gpu"
    count = _process_count(devices, gpu)
    if strategy in (None, "", "auto"):
        strategy = "auto" if count <= 1 else "ddp" if gpu else CPU_DDP_STRATEGY
    strategy = _FIND_UNUSED.get(strategy, strategy)
    return (devices if gpu else count), strategy


def _checkpoint_score(path: Path, checkpoint: ModelCheckpoint) -> float | None:
    """The best score from the callback, else from its state saved in ``path``.

    Multi-process launchers (``ddp_spawn``, ``ddp_fork``) train in child processes and give the
    main process only ``best_model_path`` back, not ``best_model_score``.
    """
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False).get("callbacks", {}).get(checkpoint.state_key, {})
    score = state.get("best_model_score")
    return float(score) if score is not None else None


def train_records(records: Sequence[Record], out: str | Path, *, variant: str = "v6", preset: str = "synthetic-small",
                  max_epochs: int | None = None, backbone_weights: str | None = None,
                  train_backbone: bool = False, seed: int = 0, devices: Any = "auto",
                  strategy: str = "auto", precision: str | None = None, cache_dir: str | Path | None = None,
                  batch_size: int | None = None, lr: float | None = None, progress: bool = True,
                  model_overrides: dict[str, Any] | None = None, augment: str | None = None) -> TrainResult:
    """Train ``variant`` with ``preset`` on ``records`` (patient-disjoint splits from ``split``).

    ``augment`` (an :data:`~chextriev.training.augment.AUGMENTATIONS` name) overrides the
    preset's training augmentation; with random crops the model takes the centre crop at test
    (``center_crop`` in its config)."""
    settings = get_preset(preset)
    if augment is not None:
        settings = replace(settings, augment=augment)
    augmentation = get_augmentation(settings.augment)
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
    data_split = split_entry(splits, seed)  # saved in every checkpoint: `chextriev evaluate` scores its test patients
    pl.seed_everything(seed, workers=True)
    atlas = Atlas.fit(splits["train"])
    adjacency = cooccurrence_adjacency(r.region_labels for r in splits["train"])
    overrides = {"center_crop": augmentation.test_center_crop} if augmentation.enabled else {}
    overrides.update(model_overrides or {})
    config = resolve_config(variant, settings.model, class_names, adjacency,
                            backbone_weights=backbone_weights, **({"train_backbone": True} if train_backbone else {}),
                            **overrides)
    monitor, mode = selection_metric(config)
    module = RetrievalModule(
        model_config=config.to_dict(), variant=variant, preset=preset, class_names=list(class_names),
        image_size=config.image_size, atlas=atlas.to_dict(), adjacency=[list(r) for r in config.adjacency],
        lr=settings.lr, weight_decay=settings.weight_decay, plateau_patience=settings.plateau_patience,
        plateau_factor=settings.plateau_factor, val_k=settings.val_k, monitor=monitor, monitor_mode=mode,
        augmentation=augmentation.to_dict(),
    )
    module.data_split = data_split
    accelerator = _accelerator(devices)
    if precision is None:
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    cache = FeatureCache(cache_dir) if settings.cache_features and config.cacheable else None
    data = RetrievalDataModule(splits, module.model, atlas, batch_size=settings.batch_size,
                               num_workers=settings.num_workers, cache=cache,
                               device="cuda" if accelerator == "gpu" else "cpu", augment=augmentation, seed=seed)
    fit_feature_stats(module.model, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode=mode, save_last=False,
                                 save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    # last.ckpt from its own callback: since Lightning 2.6, save_last=True writes last.ckpt only
    # when a top-k checkpoint is saved at the same step (a copy of best.ckpt with save_top_k=1)
    last_checkpoint = ModelCheckpoint(dirpath=out, filename="last", monitor=None, save_top_k=1,
                                      auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = [checkpoint, last_checkpoint, EarlyStopping(monitor=monitor, mode=mode, patience=settings.patience)]
    loggers = [CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")]
    callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer_devices_, trainer_strategy = trainer_devices(accelerator, devices, strategy)
    trainer = pl.Trainer(
        default_root_dir=out, max_epochs=settings.max_epochs, accelerator=accelerator,
        devices=trainer_devices_, strategy=trainer_strategy,
        precision=precision, accumulate_grad_batches=settings.accumulate, callbacks=callbacks, logger=loggers,
        enable_progress_bar=progress, log_every_n_steps=5, deterministic=False, num_sanity_val_steps=0,
        enable_model_summary=progress and log.isEnabledFor(logging.DEBUG),  # the table: with -v only
    )
    log.info("training %s (%s preset) on %d train / %d validate / %d test records -> %s", variant, preset,
             len(splits["train"]), len(splits["validate"]), len(splits["test"]), out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")  # ShardStream
        # Lightning's own use of a deprecated torch API (pytorch_lightning/utilities/_pytree.py): not
        # the user's to act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        trainer.fit(module, datamodule=data)
    best = out / "best.ckpt"
    last = out / "last.ckpt"
    score = _checkpoint_score(best, checkpoint)
    if cache is not None:
        log.info("feature cache %s: %d hits, %d computed", cache.directory, cache.hits, cache.misses)
    return TrainResult(best=best, last=last, out=out, best_score=score,
                       splits={k: len(v) for k, v in splits.items()})


def train(data: str | Path, out: str | Path, *, read_options: dict[str, Any] | None = None,
          **options: Any) -> TrainResult:
    """Load the records of ``data`` (any layout ``load_records`` reads, with ``read_options``
    such as ``class_list`` or CheXpert's ``uncertainty``; or a shard folder written by
    ``chextriev shards write``, :mod:`chextriev.training.shards`) and :func:`train_records`.
    Masked (NaN) labels are left out of the loss."""
    from chextriev.io.datasets import load_records

    if is_shard_dir(data):
        if read_options and any(k in read_options for k in ("uncertainty", "blank")):
            raise DataFormatError(f"{data} holds shards: their label policy was fixed when they were written "
                                  "(pass --uncertainty/--blank to `chextriev shards write`)")
        log.info("%s holds preprocessed shards", data)
        return train_records(load_shard_records(data), out, **options)
    return train_records(load_records(data, **(read_options or {})), out, **options)
