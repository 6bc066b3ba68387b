"""Archive -> catalog + index: discovery, decoding workers, batched embedding, one transaction per
batch, incremental index checkpoints, one writer at a time.

Durability (why kill -9 at any moment is safe):

1. each batch (its image rows, predictions, thumbnails, the skipped/failed/duplicate files seen
   since the previous batch, and their ``sources`` ledger rows) is written in ONE transaction
   (:mod:`indexer.writer`); its vectors go to the vector store first (fsynced), and the
   transaction moves the store's committed length; a killed run loses at most the uncommitted
   batch, whose files are not in the ledger and are therefore processed again by the next run;
2. the catalog (database + vector store) holds the exact embedding of every indexed image: the
   Faiss index is derived state, brought up to date every ``checkpoint_every`` batches and at
   the end (:class:`indexer.sync.IndexSyncer`), which writes only the new vectors as a new
   segment and commits a new manifest by rename;
3. every run ends with a sync, so a rerun after a kill (even one with nothing new to index) makes
   the index agree with the catalog again.

One writer per catalog: the run holds the writer locks (:mod:`indexer.lock`) from start to end;
a second run names the holder and stops, or waits with ``wait``.

Incremental: files whose size and mtime match the ledger are not read; a changed file is
re-hashed and, when its content changed, re-indexed (its old image row goes when no other file
holds that content). Duplicates (same content hash, or same SOPInstanceUID) are indexed once;
the other files are recorded in the ledger pointing at the indexed image.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from tqdm.auto import tqdm

from chextriev.errors import ChextrievError
from indexer.db import STATUS_INDEXED, Image, Pseudonymiser, Source
from indexer.decode import Decoded, decode_task
from indexer.discovery import discover
from indexer.sync import IndexSyncer, open_store
from indexer.writer import CatalogWriter, WritableCatalog

log = logging.getLogger(__name__)


@dataclass
class IndexSummary:
    """What a run did."""

    discovered: int = 0
    unchanged: int = 0
    indexed: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0
    replaced: int = 0  # changed files whose old content left the catalog
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    index_size: int = 0
    build_id: str | None = None

    def format(self) -> str:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        lines = [
            (f"discovered {self.discovered} file(s): indexed {self.indexed}, unchanged "
            f"{self.unchanged}, duplicates {self.duplicates}, skipped {self.skipped}, failed "
            f"{self.failed}, replaced {self.replaced}"),
            (f"index {self.build_id}: {self.index_size} vectors; {self.seconds:.1f} s "
            f"({rate:.1f} images/s)"),
        ]
        for reason, count in self.reasons.most_common(20):
            lines.append(f"  {count:6d} x {reason}")
        return "\n".join(lines)


def _decoded_stream(tasks: list, workers: int) -> Iterator[Decoded]:
    if workers <= 0 or len(tasks) < 2:
        yield from map(decode_task, tasks)
        return
    context = mp.get_context("spawn")  # no fork after torch threads exist
    with context.Pool(workers) as pool:
        yield from pool.imap(decode_task, tasks, chunksize=max(1, min(16, len(tasks) // (workers * 8) or 1)))


def run_index(source: str | Path, *, embedder, index_dir: str | Path, db_url: str | None = None,
              workers: int = 0, batch_size: int = 16, index_type: str = "auto",
              device: str = "cpu", pseudonymiser: Pseudonymiser | None = None,
              manifest: str | Path | None = None, checkpoint_every: int = 50,
              nprobe: int = 32, progress: bool = True, wait: float | None = None
              ) -> IndexSummary:
    """Index ``source`` into ``db_url`` + ``index_dir``; see the module docstring.

    ``embedder``: a :class:`indexer.embedder.ModelEmbedder` (or any object with its interface).
    ``workers``: decoding processes (0 = decode in this process). ``wait``: seconds to wait for
    another writer of the same catalog (None: fail at once naming it; ``math.inf``: forever).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    summary = IndexSummary()
    with WritableCatalog(index_dir, db_url, wait=wait) as catalog:
        sessions = catalog.sessions
        with sessions() as session:
            others = set(session.scalars(select(Image.checkpoint_id).where(
                Image.status == STATUS_INDEXED,
                Image.checkpoint_id != embedder.checkpoint_id).distinct()))
            if others:
                raise ChextrievError(
                    f"{index_dir} already holds images embedded with checkpoint(s) "
                    f"{sorted(others)}; this run uses {embedder.checkpoint_id}. Index into a new "
                    "--index-dir/--db.")
            n_indexed = int(session.scalar(select(func.count(Image.id)).where(
                Image.status == STATUS_INDEXED)))
            ledger = {path: (size, mtime, content_hash) for path, size, mtime, content_hash in
                      session.execute(select(Source.path, Source.file_size, Source.mtime_ns,
                                             Source.content_hash))}
            store = open_store(session, index_dir, dim=int(embedder.embedding_dim), create=True)
        candidates = discover(source, manifest=manifest, exclude=(index_dir,))
        summary.discovered = len(candidates)
        max_side = max(256, 2 * int(getattr(embedder, "image_size", 512)))
        tasks = []
        for candidate in candidates:
            known = ledger.get(candidate.path)
            if known is not None:
                try:
                    stat = os.stat(candidate.path)
                except OSError:
                    continue
                if stat.st_size == known[0] and stat.st_mtime_ns == known[1]:
                    summary.unchanged += 1
                    continue
            tasks.append((candidate, max_side, known[2] if known else None))
        del ledger
        log.info("%d file(s) discovered, %d unchanged, %d to process",
                 len(candidates), summary.unchanged, len(tasks))
        syncer = IndexSyncer(sessions, index_dir, checkpoint_id=embedder.checkpoint_id,
                             dim=embedder.embedding_dim, index_type=index_type, device=device,
                             nprobe=nprobe, expected_total=n_indexed + len(tasks), store=store)
        writer = CatalogWriter(sessions, embedder, pseudonymiser, summary, store=store)
        _run_batches(tasks, workers, batch_size, writer, syncer, checkpoint_every, summary,
                     progress)
        _checkpoint(syncer, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _checkpoint(syncer: IndexSyncer, summary: IndexSummary) -> None:
    manifest = syncer.sync()
    summary.index_size, summary.build_id = manifest.n_vectors, manifest.build_id


def _run_batches(tasks: list, workers: int, batch_size: int, writer: CatalogWriter,
                 syncer: IndexSyncer, checkpoint_every: int, summary: IndexSummary,
                 progress: bool) -> None:
    pending: list[Decoded] = []
    n_pixels = 0
    batches = 0
    bar = tqdm(total=len(tasks), unit="img", desc="indexing", disable=not progress, smoothing=0.1)
    try:
        for decoded in _decoded_stream(tasks, workers):
            pending.append(decoded)
            n_pixels += decoded.pixels is not None
            bar.update(1)
            if n_pixels >= batch_size or len(pending) >= 8 * batch_size:
                writer.write(pending)
                pending, n_pixels = [], 0
                batches += 1
                if checkpoint_every and batches % checkpoint_every == 0:
                    _checkpoint(syncer, summary)
                bar.set_postfix(indexed=summary.indexed, failed=summary.failed, refresh=False)
        writer.write(pending)
    finally:
        bar.close()
