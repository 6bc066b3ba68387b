"""The LightningModule: one model (any variant), its loss, and validation retrieval mAP@k.

``hyper_parameters`` (what :func:`chextriev.checkpoint.load_checkpoint` reads): ``model_config``
(``ModelConfig.to_dict()``, adjacency included), ``variant``, ``preset``, ``class_names``,
``image_size``, ``atlas`` (``Atlas.to_dict()``), ``adjacency``, ``model_format``
(:data:`chextriev.model.config.MODEL_FORMAT`, the weights layout) and the optimisation settings.

Validation embeds the whole validation set with :func:`chextriev.embedding.embed_features`
(the same path as :func:`chextriev.embedding.embed_images` after the frozen backbone), gathers
every rank's embeddings and labels, and logs ``val_mAP10`` (retrieval mAP@k, SPEC protocol,
``skip=False``, class average, by :func:`chextriev.retrieval.retrieval_scores`, the same core
as ``chextriev evaluate``) computed once on the whole set; checkpoints select on it. The same
validation pass chooses per-class finding thresholds (max F1, :mod:`chextriev.training.thresholds`)
from the image-level probabilities; every checkpoint stores the latest under
:data:`chextriev.checkpoint.THRESHOLDS_KEY` (``on_save_checkpoint``), so ``best.ckpt`` holds the
thresholds of its own epoch, and the run's data split (:data:`chextriev.splits.SPLIT_KEY`, set
by :func:`chextriev.training.fit.train_records` as ``data_split``). ``hyper_parameters["augmentation"]`` records the training
augmentation (``AugmentConfig.to_dict()``; informative: the model's input path depends only on
``model_config``, whose ``center_crop`` the augmentation set).

Several processes: each rank gets ``ceil(N / world)`` validation items from Lightning's
``DistributedSampler`` (padded with repeats of the first items), ``all_gather`` stacks them,
and the repeats are dropped by dataset ``index``; every rank then computes the same score on
the same ``N`` items, so it is logged without ``sync_dist`` and checkpointing / early stopping
agree on all ranks. Tested with 2 CPU processes (``ddp_spawn``, gloo:
``tests/training/test_model_ddp.py``); multi-GPU DDP is the same code but untested here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from chextriev.checkpoint import THRESHOLDS_KEY
from chextriev.embedding import outputs_to_arrays
from chextriev.model.build import build_from_config
from chextriev.model.config import MODEL_FORMAT, ModelConfig
from chextriev.retrieval import retrieval_scores
from chextriev.splits import SPLIT_KEY
from chextriev.training.thresholds import threshold_entry

MONITOR = "val_mAP10"


class RetrievalModule(pl.LightningModule):
    def __init__(self, model_config: dict[str, Any], variant: str = "", preset: str = "",
                 class_names: list[str] | None = None, image_size: int | None = None,
                 atlas: dict[str, Any] | None = None, adjacency: list[list[int]] | None = None,
                 lr: float = 1e-4, weight_decay: float = 0.0, plateau_patience: int = 3,
                 plateau_factor: float = 0.5, val_k: int = 10, monitor: str = MONITOR, monitor_mode: str = "max",
                 model_format: int = MODEL_FORMAT, augmentation: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = ModelConfig.from_dict(dict(model_config))
        self.model = build_from_config(self.config)
        self._val: list[dict[str, torch.Tensor]] = []
        self.last_val_scores: dict[str, float] = {}
        self.finding_thresholds: dict[str, Any] | None = None
        self.data_split: dict[str, Any] | None = None  # chextriev.splits.split_entry of the run

    # ------------------------------------------------------------------ steps
    def _output(self, batch: dict[str, torch.Tensor]):
        if "features" in batch:
            return self.model.forward_features(batch["features"], batch["mask"])
        return self.model(batch["image"], batch["boxes"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self._output(batch)
        loss = self.model.loss(output, batch["labels"], batch["region_labels"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self._output(batch)
        loss = self.model.loss(output, batch["labels"], batch["region_labels"])
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["labels"].shape[0])
        arrays = outputs_to_arrays(self.model, output)
        self._val.append({"embeddings": torch.from_numpy(arrays["embeddings"]).to(self.device),
                          "probabilities": torch.from_numpy(arrays["probabilities"]).to(self.device),
                          "labels": batch["labels"].float(), "index": batch["index"]})

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            # the retrieval scores are computed on the gathered set, equal on every rank: no sync
            warnings.filterwarnings("ignore", message=r".*self\.log\('val_m(AP|HR|RR)\d+', \.\.\., sync_dist=True\)")

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        local = {key: torch.cat([part[key] for part in self._val]) for key in self._val[0]}
        self._val = []
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered = self.all_gather(local)  # each (world, n, ...): equal n (sampler pads)
            local = {key: value.flatten(0, 1) for key, value in gathered.items()}
        index = local["index"].cpu().numpy()
        _, first = np.unique(index, return_index=True)  # drop the sampler's padding duplicates
        embeddings = local["embeddings"].float().cpu().numpy()[first]
        labels = local["labels"].float().cpu().numpy()[first]
        probabilities = local["probabilities"].float().cpu().numpy()[first]
        self.finding_thresholds = threshold_entry(labels, probabilities, list(self.config.class_names),
                                                  epoch=int(self.current_epoch))
        k = int(self.hparams.val_k)
        scores = retrieval_scores(embeddings, labels, k=k)
        self.last_val_scores = scores
        self.log(MONITOR, scores["mAP"], prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log(f"val_mHR{k}", scores["mHR"], sync_dist=False)
        self.log(f"val_mRR{k}", scores["mRR"], sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.finding_thresholds is not None:
            checkpoint[THRESHOLDS_KEY] = self.finding_thresholds
        if self.data_split is not None:
            checkpoint[SPLIT_KEY] = self.data_split

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.finding_thresholds = checkpoint.get(THRESHOLDS_KEY)
        self.data_split = checkpoint.get(SPLIT_KEY)

    def on_train_epoch_start(self) -> None:
        dataset = getattr(getattr(self.trainer, "train_dataloader", None), "dataset", None)
        if hasattr(dataset, "set_epoch"):  # a shard stream: a new shard order every epoch
            dataset.set_epoch(int(self.current_epoch))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=self.hparams.monitor_mode, factor=self.hparams.plateau_factor,
            patience=self.hparams.plateau_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor, "interval": "epoch"}}
