"""Indexing beyond one process: the embedding step under Lightning's distributed predict (one
process per device, on one or many nodes), each rank writing shards, then one streaming merge
into the catalog and the index. ``chextriev index --devices N --num-nodes M`` runs it all
(:func:`run_distributed_index`); the pieces are public for other launchers.

What a run does:

1. rank 0 takes the catalog's writer locks (held to the end), reads the ledger and walks the
   source ONCE: the records that need work (:func:`indexer.discovery.pending`: new or changed
   files, failed DICOMweb instances) go into a *work list* in the shard folder (one pickled
   record a line, with an offsets file: nothing but the list's length is held in memory);
2. every rank (after a barrier) reads its contiguous block of the work list and decodes it
   with the same crash-safe decoding pool and task as the one-process pipeline
   (:func:`indexer.decode_pool.decode_stream` + :func:`indexer.decode.decode_task`: fetch, tags,
   de-identification and the burned-in rule of :class:`~indexer.decode.IngestPolicy`, view
   rule, thumbnail, preview), embeds each batch with its own model (the detector too) and
   writes ``shard-r<rank>-b<batch>.npz``;
3. after a barrier rank 0 merges the shards in (rank, batch) order, i.e. in work-list order,
   one shard in memory at a time, through the same writer as the pipeline (one transaction per
   batch, dedupe, ledger, vector store, previews), syncs the index and removes the shards.

Contiguous blocks in work-list order make the catalog of an N-process run the same as that of a
one-process run (same ids, rows, vectors and index; ``tests/indexer/test_indexer_distributed.py``).
A killed run leaves shards that the next run discards (its records are not in the ledger, so
they are embedded again); a killed merge keeps what it committed.

The shard files and the work list are :mod:`indexer.shards`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from chextriev.errors import ChextrievError, SourceUnavailableError
from chextriev.io.pixels import PREVIEW_SIDE
from indexer import db_write
from indexer.decode import OK, UNAVAILABLE, Decoded, IngestPolicy, decode_task, given_boxes
from indexer.faiss_factory import DEFAULT_NPROBE
from indexer.shards import (
    EmbedderInfo,
    clear_shards,
    info_of,
    rank_block,
    read_shard,
    read_worklist,
    shard_files,
    worklist_length,
    write_shard,
    write_worklist,
)

log = logging.getLogger(__name__)

#: How long a rank waits for the others (rank 0's walk of the source, the slowest rank's
#: embedding) before the process group gives up.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


class _ShardEmbedder:
    """The embedder interface for the merge: every image already carries its outputs."""

    image_size = 0

    def __init__(self, info: EmbedderInfo):
        self.checkpoint_id = info.checkpoint_id
        self.embedding_dim = info.embedding_dim
        self.class_names = info.class_names

    def __call__(self, images, boxes=None):  # pragma: no cover - shards are pre-embedded
        raise RuntimeError("shard images are already embedded")


def _already_merged(session, items: Sequence[Decoded]) -> set[str]:
    """Keys of ``items`` that the ledger holds with the same version and content (merged by an
    earlier, interrupted merge of the same shards): one query per shard."""
    known = db_write.ledger_versions(session, [d.key for d in items])
    return {d.key for d in items
            if known.get(d.key) == (d.file_size, d.mtime_ns, d.content_hash)}


def merge_into(catalog, shards: Sequence[Path], summary, *, index_dir: Path,
               index_type: str = "auto", device: str = "cpu", nprobe: int = DEFAULT_NPROBE,
               batch_size: int = 256, expected_total: int = 0, count_discovered: bool = True,
               bundle=None):
    """Write ``shards`` (in order) into an open :class:`~indexer.writer.WritableCatalog` and
    sync the index; returns the manifest. One shard is read at a time. Records that the
    source could not deliver (``unavailable``) are not stored (the next run fetches them);
    their number is returned in ``summary.reasons["unavailable"]``."""
    from indexer.sync import IndexSyncer
    from indexer.vector_store import open_store
    from indexer.writer import CatalogWriter

    sessions = catalog.sessions
    info = writer = None
    for shard in shards:
        items, shard_info = read_shard(shard)
        if info is None:
            info = shard_info
            with sessions() as session:
                store = open_store(session, index_dir, dim=info.embedding_dim, create=True)
            writer = CatalogWriter(sessions, _ShardEmbedder(info), summary, store=store)
        elif shard_info != info:
            raise ChextrievError(f"{shard} was made by checkpoint {shard_info.checkpoint_id}, "
                                 f"the first shard by {info.checkpoint_id}")
        with sessions() as session:
            merged = _already_merged(session, items)
        fresh = []
        for d in items:
            if count_discovered:
                summary.discovered += 1
            if d.status == UNAVAILABLE:
                summary.reasons["unavailable"] += 1
            elif d.key in merged:
                summary.unchanged += 1
            else:
                fresh.append(d)
        for start in range(0, len(fresh), batch_size):
            writer.write(fresh[start:start + batch_size])
    if info is None:
        return None
    return IndexSyncer(sessions, index_dir, checkpoint_id=info.checkpoint_id,
                       dim=info.embedding_dim, index_type=index_type, device=device,
                       nprobe=nprobe, expected_total=expected_total, store=writer.store,
                       bundle=bundle).sync()


def merge_shards(shard_dir: str | Path, *, index_dir: str | Path, db_url: str | None = None,
                 index_type: str = "auto", device: str = "cpu",
                 batch_size: int = 256, wait: float | None = None):
    """Write every shard of ``shard_dir`` into the catalog and build one index; returns the
    :class:`~indexer.pipeline.IndexSummary`. Idempotent: merging again adds nothing. Shards
    hold the decoding workers' records (de-identified by :func:`embed_to_shards`' ``policy``);
    shards that would mix the catalog's ledger are refused first (``ledger.check_merge``)."""
    from indexer.ledger import check_merge
    from indexer.pipeline import IndexSummary
    from indexer.writer import WritableCatalog

    shards = shard_files(shard_dir)
    if not shards:
        raise ChextrievError(f"no shard-*.npz files in {shard_dir}")
    index_dir = Path(index_dir)
    summary = IndexSummary()
    with WritableCatalog(index_dir, db_url, wait=wait) as catalog:
        check_merge(catalog.sessions, shards)
        manifest = merge_into(catalog, shards, summary, index_dir=index_dir,
                              index_type=index_type, device=device, batch_size=batch_size)
    summary.index_size, summary.build_id = manifest.n_vectors, manifest.build_id
    return summary


# ---------------------------------------------------------------------- Lightning predict
def decoded_batches(tasks, batch_size: int, workers: int, connections=()
                    ) -> Iterator[list[Decoded]]:
    """Decoded records in task order, grouped as the pipeline groups them (``batch_size``
    images to embed, or 8 x that many records), through the crash-safe decoding pool."""
    from indexer.decode_pool import decode_stream

    items: list[Decoded] = []
    n_pixels = 0
    for decoded in decode_stream(tasks, workers, connections, task_fn=decode_task):
        items.append(decoded)
        n_pixels += decoded.pixels is not None
        if n_pixels >= batch_size or len(items) >= 8 * batch_size:
            yield items
            items, n_pixels = [], 0
    if items:
        yield items


def _data_module(shard_dir: Path, *, batch_size: int, workers: int, max_input_side: int | None,
                 policy: IngestPolicy | None, preview_side: int, connections=()):
    """A LightningDataModule whose ``setup`` waits for rank 0's work list (a barrier) and whose
    loader yields the decoded batches of this rank's block."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, IterableDataset

    class RankBlock(IterableDataset):
        def __init__(self, block: range):
            self.block = block

        def __iter__(self):
            tasks = ((record, max_input_side, known_hash, policy, preview_side)
                     for record, known_hash in read_worklist(shard_dir, self.block))
            return decoded_batches(tasks, batch_size, workers, connections)

    class WorkListData(pl.LightningDataModule):
        def setup(self, stage: str) -> None:
            self.trainer.strategy.barrier("chextriev-worklist")
            rank, world = self.trainer.global_rank, self.trainer.world_size
            self.block = rank_block(worklist_length(shard_dir), rank, world)
            log.info("rank %d of %d: %d record(s) to decode and embed", rank, world,
                     len(self.block))

        def predict_dataloader(self):
            return DataLoader(RankBlock(self.block), batch_size=None, num_workers=0,
                              collate_fn=lambda batch: batch)

    return WorkListData()


def make_predict_module(embedder):
    """A LightningModule whose ``predict_step`` embeds a batch of decoded records with
    ``embedder`` (built on this rank's device), the records' given boxes passed along."""
    import pytorch_lightning as pl

    class EmbedPredictModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embedder = embedder

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            return batch  # decoded records: the embedder moves the pixels itself

        def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
            ready = [d for d in batch if d.status == OK and d.pixels is not None]
            outputs = self.embedder([d.pixels for d in ready],
                                    boxes=[given_boxes(d) for d in ready]) if ready else None
            return batch, outputs

    return EmbedPredictModule()


def make_shard_writer(shard_dir: str | Path, info: EmbedderInfo):
    """A BasePredictionWriter writing ``shard-r<rank>-b<batch>.npz`` after every batch, and
    waiting for every rank at the end (so that rank 0 merges complete shards only)."""
    from pytorch_lightning.callbacks import BasePredictionWriter

    class ShardWriter(BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.shard_dir = Path(shard_dir)

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                               batch_idx, dataloader_idx):
            items, outputs = prediction
            write_shard(self.shard_dir / f"shard-r{trainer.global_rank:04d}-b{batch_idx:07d}.npz",
                        items, outputs, info)

        def on_predict_end(self, trainer, pl_module):
            trainer.strategy.barrier("chextriev-shards")

    return ShardWriter()


def make_trainer(*, devices="auto", num_nodes: int = 1, accelerator: str = "auto",
                 progress: bool = True, callbacks=()):
    """The Lightning Trainer of a distributed embedding: DDP (gloo on CPU, NCCL on GPUs) when
    more than one process takes part, with :data:`BARRIER_TIMEOUT`."""
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    many = num_nodes > 1 or (isinstance(devices, int) and devices > 1) or (
        isinstance(devices, (list, tuple)) and len(devices) > 1)
    return pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                      strategy=DDPStrategy(timeout=BARRIER_TIMEOUT) if many else "auto",
                      logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                      enable_model_summary=False, use_distributed_sampler=False,
                      callbacks=list(callbacks))


def rank_device(trainer) -> str:
    """The torch device this rank embeds on (``cuda:<local rank>`` or ``cpu``)."""
    device = trainer.strategy.root_device
    return str(device) if device.type == "cuda" else "cpu"


def _predict(trainer, embedder, shard_dir: Path, *, batch_size: int, workers: int,
             max_input_side: int | None, policy, preview_side: int, connections=()) -> None:
    data = _data_module(shard_dir, batch_size=batch_size, workers=workers, max_input_side=max_input_side,
                        policy=policy, preview_side=preview_side, connections=connections)
    trainer.callbacks.append(make_shard_writer(shard_dir, info_of(embedder)))
    trainer.predict(make_predict_module(embedder), datamodule=data, return_predictions=False)


def embed_to_shards(source: str | Path, checkpoint: str | Path | None, shard_dir: str | Path, *,
                    devices="auto", num_nodes: int = 1, accelerator: str = "auto",
                    batch_size: int = 32, workers: int = 4, embedder_factory=None,
                    policy: IngestPolicy | None = None, preview_side: int = PREVIEW_SIDE,
                    progress: bool = True) -> None:
    """Embed every record of ``source`` under ``Trainer.predict`` (one process per device);
    each rank writes its shards into ``shard_dir`` (merge them with :func:`merge_shards`). No
    ledger: every record is embedded (``chextriev index --devices`` embeds only what the
    catalog lacks). ``embedder_factory(device)`` builds the embedder on a rank's device
    (default: ``ModelEmbedder(checkpoint, ...)``); ``policy``: de-identification and the
    burned-in rule of the decoding."""
    from indexer.discovery import open_archive

    shard_dir = Path(shard_dir)
    if embedder_factory is None:
        from indexer.embedder import ModelEmbedder

        def embedder_factory(device: str):
            return ModelEmbedder(checkpoint, device=device, batch_size=batch_size)

    trainer = make_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator,
                           progress=progress)
    archive = open_archive(source)
    if trainer.global_rank == 0:
        clear_shards(shard_dir)
        write_worklist(((record, None) for record in archive.iter_records()), shard_dir)
    embedder = embedder_factory(rank_device(trainer))
    _predict(trainer, embedder, shard_dir, batch_size=batch_size, workers=workers,
             max_input_side=embedder.max_input_side, policy=policy, preview_side=preview_side,
             connections=archive.connections())


def run_distributed_index(source, *, embedder_factory, index_dir: str | Path,
                          db_url: str | None = None, devices="auto", num_nodes: int = 1,
                          accelerator: str = "auto", shard_dir: str | Path | None = None,
                          workers: int = 0, batch_size: int = 16, index_type: str = "auto",
                          device: str = "cpu", policy: IngestPolicy | None = None,
                          manifest: str | Path | None = None, nprobe: int = DEFAULT_NPROBE,
                          progress: bool = True, source_options: dict | None = None,
                          wait: float | None = None, preview_side: int = PREVIEW_SIDE,
                          copy_checkpoint: bool = False):
    """:func:`indexer.pipeline.run_index` with the embedding spread over ``devices`` x
    ``num_nodes`` processes (see the module docstring). Every process calls it (Lightning
    starts the others on one node; torchrun or SLURM start them all); rank 0 returns the
    :class:`~indexer.pipeline.IndexSummary`, the other ranks None.

    Rank 0 records the bundle (:mod:`indexer.bundle`) as the one-process run does
    (``copy_checkpoint`` likewise).

    ``embedder_factory(device)`` builds the embedder on a rank's device. ``shard_dir`` (default
    ``<index_dir>/shards``) must be a folder every node sees. ``workers``: decoding processes
    per rank.

    Raises:
        SourceUnavailableError: the source went away mid-run (what was embedded is kept).
    """
    import time

    from indexer.discovery import open_archive, pending
    from indexer.pipeline import IndexSummary, read_ledger, stored_key
    from indexer.writer import WritableCatalog

    started = time.perf_counter()
    index_dir = Path(index_dir)
    shard_dir = Path(shard_dir) if shard_dir else index_dir / "shards"
    trainer = make_trainer(devices=devices, num_nodes=num_nodes, accelerator=accelerator,
                           progress=progress)
    archive = open_archive(source, manifest=manifest, exclude=(index_dir, shard_dir),
                           **(source_options or {}))
    embedder = embedder_factory(rank_device(trainer))
    options = {"batch_size": batch_size, "workers": workers, "max_input_side": embedder.max_input_side,
               "policy": policy, "preview_side": preview_side,
               "connections": archive.connections()}
    if trainer.global_rank != 0:
        _predict(trainer, embedder, shard_dir, **options)
        return None
    from indexer.bundle import BuildRecord

    summary = IndexSummary()
    log.info("indexing %s on %d process(es)", archive.describe(), trainer.world_size)
    bundle = BuildRecord.from_embedder(embedder, index_dir=index_dir, index_type=index_type,
                                       device=device, copy=copy_checkpoint)
    with WritableCatalog(index_dir, db_url, wait=wait) as catalog:
        with catalog.sessions() as session:
            ledger, n_indexed = read_ledger(session, embedder.checkpoint_id, index_dir, policy)
        stale = clear_shards(shard_dir)
        if stale:
            log.warning("discarded %d shard(s) of an interrupted run in %s (their records are "
                        "embedded again)", stale, shard_dir)
        n = write_worklist(pending(archive.iter_records(), ledger, summary, stored_key(policy)),
                           shard_dir)
        del ledger
        log.info("%d record(s) discovered, %d unchanged, %d to embed", summary.discovered,
                 summary.unchanged, n)
        external = trainer.strategy.cluster_environment.creates_processes_externally \
            if trainer.world_size > 1 else False
        if n or external:  # torchrun / SLURM ranks wait in predict: always join them
            _predict(trainer, embedder, shard_dir, **options)
        manifest_ = merge_into(catalog, shard_files(shard_dir), summary, index_dir=index_dir,
                               index_type=index_type, device=device, nprobe=nprobe,
                               expected_total=n_indexed + n, count_discovered=False,
                               bundle=bundle)
        if manifest_ is None:  # nothing new: still bring the index in step with the catalog
            from indexer.sync import IndexSyncer
            from indexer.vector_store import open_store

            with catalog.sessions() as session:
                store = open_store(session, index_dir, dim=int(embedder.embedding_dim),
                                   create=True)
            manifest_ = IndexSyncer(catalog.sessions, index_dir,
                                    checkpoint_id=embedder.checkpoint_id,
                                    dim=embedder.embedding_dim, index_type=index_type,
                                    device=device, nprobe=nprobe, expected_total=n_indexed,
                                    store=store, bundle=bundle).sync()
        clear_shards(shard_dir)
    summary.index_size, summary.build_id = manifest_.n_vectors, manifest_.build_id
    summary.seconds = time.perf_counter() - started
    unavailable = summary.reasons.pop("unavailable", 0)
    if unavailable:
        raise SourceUnavailableError(
            f"the source went away during the run: {unavailable} record(s) could not be fetched "
            f"(this run stored {summary.indexed} new image(s); rerun to fetch the rest)")
    return summary
