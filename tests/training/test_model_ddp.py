"""Multi-process training on CPU (ddp_spawn, gloo): validation mAP@10 is the whole set's.

The slow test trains the ``tiny`` preset with 2 processes on a validation split of odd size
(so Lightning's DistributedSampler pads one rank with a repeat), then recomputes mAP@10 in
this process with the saved weights on the whole validation set, through the one embedding
path (``chextriev.embedding.embed_images``), and compares it with the selected score and the
metrics CSV. It also checks the logged value is not what one rank's share (or the padded
set) would give, so it fails if the gather or the padding removal were dropped.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from chextriev.checkpoint import load_checkpoint
from chextriev.embedding import embed_images
from chextriev.io.images import load_image
from chextriev.retrieval import retrieval_scores
from chextriev.training.data import split_records
from chextriev.training.fit import CPU_DDP_STRATEGY, train_records, trainer_devices
from chextriev.training.quick import synthetic_records

WORLD = 2


def _gloo_available() -> bool:
    return dist.is_available() and dist.is_gloo_available()


def test_model_trainer_devices_cpu_and_gpu():
    # default: one process on CPU, exactly as before
    assert trainer_devices("cpu", "auto", "auto") == (1, "auto")
    assert trainer_devices("cpu", 1, "auto") == (1, "auto")
    assert trainer_devices("cpu", "cpu", "auto") == (1, "auto")
    assert trainer_devices("cpu", [0, 1], "auto") == (1, "auto")  # GPU ids on a CPU-only machine
    # a count > 1: that many spawned gloo processes
    assert trainer_devices("cpu", 2, "auto") == (2, CPU_DDP_STRATEGY) == (2, "ddp_spawn_find_unused_parameters_true")
    assert trainer_devices("cpu", "3", None) == (3, CPU_DDP_STRATEGY)
    # an explicit strategy is passed through (plain DDP names detect the heads left out of the loss)
    assert trainer_devices("cpu", 2, "ddp_fork") == (2, "ddp_fork_find_unused_parameters_true")
    assert trainer_devices("cpu", 2, "ddp_spawn_find_unused_parameters_false") == (
        2, "ddp_spawn_find_unused_parameters_false")
    assert trainer_devices("gpu", [0, 1], "auto") == ([0, 1], "ddp_find_unused_parameters_true")
    assert trainer_devices("gpu", 1, "auto") == (1, "auto")
    assert trainer_devices("gpu", 2, "ddp") == (2, "ddp_find_unused_parameters_true")


def _rank_share(n: int, rank: int) -> list[int]:
    """The indices DistributedSampler(shuffle=False, drop_last=False) gives ``rank``."""
    total = math.ceil(n / WORLD) * WORLD
    padded = list(range(n)) + list(range(n))[: total - n]
    return padded[rank:total:WORLD]


def _epoch_scores(run) -> dict[int, float]:
    rows = list(csv.DictReader(next((run / "logs").rglob("metrics.csv")).open()))
    return {int(row["epoch"]): float(row["val_mAP10"]) for row in rows if row.get("val_mAP10")}


@pytest.mark.slow
@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is unavailable")
def test_model_ddp_cpu_val_map_is_whole_validation_set(tmp_path):
    records = synthetic_records(tmp_path / "records", n=35, size=64)
    validate = split_records(records)["validate"]
    n = len(validate)
    assert n % WORLD == 1, n  # the sampler pads: one rank sees a repeat

    result = train_records(records, tmp_path / "run", variant="v6", preset="tiny", max_epochs=2, devices=WORLD,
                           progress=False, cache_dir=tmp_path / "cache", seed=0)
    assert result.splits["validate"] == n
    assert result.best.is_file() and result.last.is_file()
    assert result.best_score is not None  # carried back from the spawned workers via the checkpoint

    last = torch.load(result.last, map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # the final weights, not a copy of best.ckpt
    train_per_rank = math.ceil(result.splits["train"] / WORLD)
    batches = math.ceil(train_per_rank / 8)  # tiny preset: batch 8
    assert last["global_step"] == 2 * batches != 2 * math.ceil(result.splits["train"] / 8), (
        "training did not run in 2 processes")

    logged = _epoch_scores(result.out)
    assert sorted(logged) == [0, 1], logged
    images = [load_image(r.source) for r in validate]
    boxes = [r.boxes for r in validate]
    labels = np.stack([r.labels for r in validate])
    for name, path in (("best", result.best), ("last", result.last)):
        epoch = int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
        embeddings = embed_images(load_checkpoint(path), images, boxes).embeddings
        whole = retrieval_scores(embeddings, labels, k=10)["mAP"]
        assert logged[epoch] == pytest.approx(whole, abs=1e-6), (name, epoch, logged, whole)
        if name == "best":
            assert result.best_score == pytest.approx(whole, abs=1e-6)
            assert result.best_score == pytest.approx(max(logged.values()), abs=1e-9)
        # what a rank alone, or the padded set without dropping the repeat, would have logged
        wrong = {f"rank {rank}": sorted(set(_rank_share(n, rank))) for rank in range(WORLD)}
        wrong["padded"] = _rank_share(n, 0) + _rank_share(n, 1)
        for label, rows in wrong.items():
            other = retrieval_scores(embeddings[rows], labels[rows], k=10)["mAP"]
            assert abs(other - whole) > 1e-4, f"{name}: {label} gives the whole set's mAP: test cannot tell them apart"
            assert logged[epoch] != pytest.approx(other, abs=1e-6), (name, label, logged[epoch], other)
