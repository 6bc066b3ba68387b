"""Indexing beyond one machine: the embedding step under Lightning's distributed predict, each
rank writing shards, then one merge into the catalog and the index.

    # on every node (Lightning starts one process per device; DistributedSampler splits files)
    from indexer.distributed import embed_to_shards
    embed_to_shards("archive/", "model.ckpt", "shards/", devices=8, num_nodes=4, strategy="ddp")
    # once, anywhere that sees the shard folder and the database:
    from indexer.distributed import merge_shards
    merge_shards("shards/", embedder_info, index_dir="idx", db_url="postgresql://...")

Shard format (``shard-r<rank>-b<batch>.npz``, no pickles): ``paths``, ``hashes``,
``sizes``, ``mtimes``, ``status``, ``reasons``, ``meta`` (JSON per file), ``emb_row`` (row of
each file in the arrays below, -1 when not embedded), ``embeddings (n, D)``, ``probabilities
(n, C)``, ``region_probabilities (n, 18, C)`` and ``region_embeddings (n, 18, R)`` (absent for
global models), ``boxes (n, 18, 4)`` original pixels, ``box_sources``, ``thumbs`` (concatenated
PNG bytes) with ``thumb_offsets``, and ``info`` (JSON: checkpoint id, dimension, class names).
A shard is written to a temporary name and renamed, so a killed rank leaves no partial shard;
rerunning ``embed_to_shards`` skips nothing (it is a batch job), ``merge_shards`` is idempotent
(the ledger and the content hashes dedupe).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chextriev.records import Record
from indexer.decode import OK, Decoded, decode, given_boxes
from indexer.discovery import discover

log = logging.getLogger(__name__)


@dataclass
class EmbedderInfo:
    """What the merge needs to know about the model that made the shards."""

    checkpoint_id: str
    embedding_dim: int
    class_names: tuple[str, ...]


def write_shard(path: str | Path, items: Sequence[Decoded], batch, info: EmbedderInfo) -> Path:
    """Write one shard: ``items`` (decoded files) and ``batch`` (model outputs of the items with
    pixels, in order; None when there are none). Atomic (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    embedded = [i for i, d in enumerate(items) if d.status == OK and d.pixels is not None]
    emb_row = np.full(len(items), -1, np.int64)
    emb_row[embedded] = np.arange(len(embedded))
    arrays: dict[str, np.ndarray] = {
        "paths": np.array([d.path for d in items], dtype=str),
        "hashes": np.array([d.content_hash or "" for d in items], dtype=str),
        "sizes": np.array([d.file_size for d in items], np.int64),
        "mtimes": np.array([d.mtime_ns for d in items], np.int64),
        "status": np.array([d.status for d in items], dtype=str),
        "reasons": np.array([d.reason or "" for d in items], dtype=str),
        "formats": np.array([d.fmt or "" for d in items], dtype=str),
        "hw": np.array([d.original_hw or (0, 0) for d in items], np.int64).reshape(-1, 2),
        "meta": np.array([json.dumps(d.meta) for d in items], dtype=str),
        "emb_row": emb_row,
        "info": np.array(json.dumps(info.__dict__ | {"class_names": list(info.class_names)})),
    }
    thumbs = [d.thumbnail or b"" for d in items]
    arrays["thumbs"] = np.frombuffer(b"".join(thumbs), np.uint8)
    arrays["thumb_offsets"] = np.cumsum([0] + [len(t) for t in thumbs]).astype(np.int64)
    if embedded:
        scales = []
        for i in embedded:
            d = items[i]
            h, w = d.pixels.shape
            scales.append([d.original_hw[1] / w, d.original_hw[0] / h] * 2)
        arrays["embeddings"] = np.asarray(batch.embeddings, np.float32)
        arrays["probabilities"] = np.asarray(batch.probabilities, np.float32)
        arrays["boxes"] = np.asarray(batch.boxes, np.float32) * np.asarray(scales, np.float32)[:, None, :]
        arrays["box_sources"] = np.array(batch.box_sources, dtype=str)
        if batch.region_probabilities is not None:
            arrays["region_probabilities"] = np.asarray(batch.region_probabilities, np.float32)
        if batch.region_embeddings is not None:
            arrays["region_embeddings"] = np.asarray(batch.region_embeddings, np.float16)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_shard(path: str | Path) -> tuple[list[Decoded], EmbedderInfo]:
    """The decoded files of one shard, each with ``embedded`` model outputs when it has them."""
    with np.load(path, allow_pickle=False) as data:
        info = json.loads(str(data["info"]))
        offsets = data["thumb_offsets"]
        thumbs = data["thumbs"].tobytes()
        out = []
        for i, p in enumerate(data["paths"]):
            thumb = thumbs[offsets[i]:offsets[i + 1]] or None
            hw = tuple(int(v) for v in data["hw"][i])
            d = Decoded(str(p), int(data["sizes"][i]), int(data["mtimes"][i]),
                        str(data["hashes"][i]) or None, str(data["status"][i]),
                        str(data["reasons"][i]) or None, str(data["formats"][i]) or None,
                        json.loads(str(data["meta"][i])), None, hw if hw != (0, 0) else None, thumb)
            row = int(data["emb_row"][i])
            if row >= 0:
                d.embedded = {
                    "embedding": data["embeddings"][row],
                    "probabilities": data["probabilities"][row],
                    "region_probabilities": data["region_probabilities"][row]
                    if "region_probabilities" in data else None,
                    "region_embeddings": data["region_embeddings"][row]
                    if "region_embeddings" in data else None,
                    "boxes": data["boxes"][row],
                    "box_source": str(data["box_sources"][row]),
                }
            out.append(d)
    return out, EmbedderInfo(info["checkpoint_id"], int(info["embedding_dim"]),
                             tuple(info["class_names"]))


class _ShardEmbedder:
    """The embedder interface for the merge: every image already carries its outputs."""

    image_size = 0

    def __init__(self, info: EmbedderInfo):
        self.checkpoint_id = info.checkpoint_id
        self.embedding_dim = info.embedding_dim
        self.class_names = info.class_names

    def __call__(self, images):  # pragma: no cover - never called: shards are pre-embedded
        raise RuntimeError("shard images are already embedded")


def merge_shards(shard_dir: str | Path, *, index_dir: str | Path, db_url: str | None = None,
                 index_type: str = "auto", device: str = "cpu",
                 batch_size: int = 256, wait: float | None = None):
    """Write every shard of ``shard_dir`` into the catalog and build one index; returns the
    :class:`~indexer.pipeline.IndexSummary`. Idempotent: merging again adds nothing. The shards
    hold what the decoding workers made of each record (de-identified with ``policy`` given to
    :func:`embed_to_shards`)."""
    from sqlalchemy import select

    from indexer.db import Source
    from indexer.pipeline import IndexSummary
    from indexer.sync import IndexSyncer, open_store
    from indexer.writer import CatalogWriter, WritableCatalog

    shards = sorted(Path(shard_dir).glob("shard-*.npz"))
    if not shards:
        from chextriev.errors import ChextrievError

        raise ChextrievError(f"no shard-*.npz files in {shard_dir}")
    index_dir = Path(index_dir)
    summary = IndexSummary()
    info = None
    with WritableCatalog(index_dir, db_url, wait=wait) as catalog:
        sessions = catalog.sessions
        seen: set[str] = set()
        with sessions() as session:
            seen.update(session.scalars(select(Source.path)))
        writer = None
        for shard in shards:
            items, shard_info = read_shard(shard)
            if info is None:
                info = shard_info
                with sessions() as session:
                    store = open_store(session, index_dir, dim=info.embedding_dim, create=True)
                writer = CatalogWriter(sessions, _ShardEmbedder(info), summary, store=store)
            elif shard_info != info:
                from chextriev.errors import ChextrievError

                raise ChextrievError(f"{shard} was made by checkpoint {shard_info.checkpoint_id}, "
                                     f"the first shard by {info.checkpoint_id}")
            fresh = []
            for d in items:  # DistributedSampler pads ranks with repeated files: keep the first
                summary.discovered += 1
                if d.path in seen:
                    summary.unchanged += 1
                    continue
                seen.add(d.path)
                fresh.append(d)
            for start in range(0, len(fresh), batch_size):
                writer.write(fresh[start:start + batch_size])
        manifest = IndexSyncer(sessions, index_dir, checkpoint_id=info.checkpoint_id,
                               dim=info.embedding_dim, index_type=index_type, device=device,
                               store=writer.store).sync()
    summary.index_size, summary.build_id = manifest.n_vectors, manifest.build_id
    return summary


# ---------------------------------------------------------------------- Lightning predict
def _collate(items):
    return items


class _RecordDataset:
    """torch Dataset of records; ``__getitem__`` decodes in DataLoader workers."""

    def __init__(self, records: Sequence[Record], max_side: int, policy=None):
        self.records = list(records)
        self.max_side = max_side
        self.policy = policy

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Decoded:
        return decode(self.records[i], self.max_side, policy=self.policy)


def make_predict_module(embedder_factory):
    """A LightningModule whose ``predict_step`` embeds a batch of decoded files.

    ``embedder_factory(device: str)`` builds the embedder on the rank's device (e.g.
    ``lambda device: ModelEmbedder(ckpt, device=device)``).
    """
    import pytorch_lightning as pl

    class EmbedPredictModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embedder = None

        def setup(self, stage: str) -> None:
            device = "cuda" if self.trainer.strategy.root_device.type == "cuda" else "cpu"
            self.embedder = embedder_factory(str(self.trainer.strategy.root_device)
                                             if device == "cuda" else "cpu")

        def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
            ready = [d for d in batch if d.status == OK and d.pixels is not None]
            outputs = self.embedder([d.pixels for d in ready],
                                    boxes=[given_boxes(d) for d in ready]) if ready else None
            return batch, outputs

    return EmbedPredictModule()


def make_shard_writer(shard_dir: str | Path, info_of):
    """A BasePredictionWriter writing ``shard-r<rank>-b<batch>.npz`` after every batch."""
    from pytorch_lightning.callbacks import BasePredictionWriter

    class ShardWriter(BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.shard_dir = Path(shard_dir)
            self.shard_dir.mkdir(parents=True, exist_ok=True)

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                               batch_idx, dataloader_idx):
            items, outputs = prediction
            write_shard(self.shard_dir / f"shard-r{trainer.global_rank:04d}-b{batch_idx:07d}.npz",
                        items, outputs, info_of(pl_module.embedder))

    return ShardWriter()


def embed_to_shards(source: str | Path, checkpoint: str | Path | None, shard_dir: str | Path, *,
                    devices="auto", num_nodes: int = 1, strategy: str = "auto",
                    accelerator: str = "auto", batch_size: int = 32, workers: int = 4,
                    embedder_factory=None, max_side: int = 1024, policy=None) -> None:
    """Run the embedding step under ``Trainer.predict`` (one process per device, files split by
    Lightning's DistributedSampler); each rank writes its shards into ``shard_dir``. ``policy``:
    :class:`indexer.decode.IngestPolicy` (de-identification, burned-in rule) for the decoding."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    if embedder_factory is None:
        from indexer.embedder import ModelEmbedder

        def embedder_factory(device: str):
            return ModelEmbedder(checkpoint, device=device, batch_size=batch_size)

    def info_of(embedder) -> EmbedderInfo:
        return EmbedderInfo(embedder.checkpoint_id, int(embedder.embedding_dim),
                            tuple(embedder.class_names))

    records = discover(source)
    loader = DataLoader(_RecordDataset(records, max_side, policy), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                         strategy=strategy, logger=False, enable_checkpointing=False,
                         enable_progress_bar=True,
                         callbacks=[make_shard_writer(shard_dir, info_of)])
    trainer.predict(make_predict_module(embedder_factory), dataloaders=loader,
                    return_predictions=False)
