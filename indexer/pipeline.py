"""Archive -> catalog + index: records from the source (``chextriev.io.sources``, the one reader
path), decoding workers, batched embedding, one transaction per batch, incremental index
checkpoints, one writer at a time.

Durability (why kill -9 at any moment is safe):

1. each batch (its image rows, predictions, thumbnails, the skipped/failed/duplicate records
   seen since the previous batch, and their ``sources`` ledger rows) is written in ONE
   transaction (:mod:`indexer.writer`); its vectors go to the vector store first (fsynced), and
   the transaction moves the store's committed length; a killed run loses at most the
   uncommitted batch, whose records are not in the ledger and are therefore processed again by
   the next run;
2. the catalog (database + vector store) holds the exact embedding of every indexed image: the
   Faiss index is derived state, brought up to date every ``checkpoint_every`` batches and at
   the end (:class:`indexer.sync.IndexSyncer`), which writes only the new vectors as a new
   segment and commits a new manifest by rename;
3. every run ends with a sync, so a rerun after a kill (even one with nothing new to index) makes
   the index agree with the catalog again.

One writer per catalog: the run holds the writer locks (:mod:`indexer.lock`) from start to end;
a second run names the holder and stops, or waits with ``wait``.

Incremental (:mod:`indexer.discovery`): records whose key and version match the ledger are not
read (files: size and mtime; DICOMweb instances: the SOPInstanceUID key alone, failed ones are
tried again); a changed file is re-hashed and, when its content changed, re-indexed (its old
image row goes when no other file holds that content). Duplicates (same content hash, or same
SOPInstanceUID) are indexed once; the other records are ledger rows pointing at the indexed image.

Records stream: the source is read while earlier records are decoded, in chunks of
``_CHUNK`` records, so memory stays flat however large the archive. When the source becomes
unreachable mid-run (a DICOMweb service going down), what was decoded is committed, the index
is synced, and :class:`~chextriev.errors.SourceUnavailableError` is raised: the records not
fetched are not in the ledger, so the next run fetches them.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from chextriev.errors import ChextrievError, SourceError, SourceUnavailableError
from chextriev.io.pixels import PREVIEW_SIDE
from indexer import db_write
from indexer.bundle import BuildRecord
from indexer.decode import UNAVAILABLE, Decoded, IngestPolicy, decode_task
from indexer.decode_pool import decode_stream
from indexer.discovery import LedgerEntry, open_archive, pending
from indexer.faiss_factory import DEFAULT_NPROBE
from indexer.ledger import check_mode, versioned
from indexer.stops import stop_error
from indexer.sync import IndexSyncer
from indexer.vector_store import open_store
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

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict:
        """Every figure of the run, JSON-ready (``chextriev index --json``; :meth:`format`
        prints the same fields as prose, the 20 most common reasons only)."""
        figures = {name: getattr(self, name) for name in self.__dataclass_fields__}
        figures["reasons"] = dict(self.reasons.most_common())
        figures["images_per_second"] = self.images_per_second
        return figures

    def format(self) -> str:
        rate = self.images_per_second
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


#: Records taken from the source at a time (bounds memory on a million-file archive).
_CHUNK = 512


def _decoded_stream(tasks: Iterable, workers: int, connections=()) -> Iterator[Decoded]:
    """Decoded items in task order; with workers, a decoder that kills its process fails that
    one file (:mod:`indexer.decode_pool`) instead of hanging the run."""
    tasks = iter(tasks)
    first = list(itertools.islice(tasks, 2))
    if workers <= 0 or len(first) < 2:
        yield from map(decode_task, itertools.chain(first, tasks))
        return
    # decode_task is looked up here, at call time, so a test can substitute a crashing one.
    yield from decode_stream(itertools.chain(first, tasks), workers, connections,
                             task_fn=decode_task, window=min(_CHUNK, 32 * workers))


def read_ledger(session, checkpoint_id: str, index_dir: Path, policy: IngestPolicy | None = None
                ) -> tuple[dict[str, LedgerEntry], int]:
    """``({stored key: LedgerEntry}, number of indexed images)`` of a catalog that a run with
    ``checkpoint_id`` (and ``policy``) is about to add to; refuses a catalog embedded with
    another checkpoint, and one whose ledger the run's pseudonymisation would mix
    (:func:`indexer.ledger.check_mode`)."""
    others = db_write.foreign_checkpoints(session, checkpoint_id)
    if others:
        raise ChextrievError(
            f"{index_dir} already holds images embedded with checkpoint(s) {sorted(others)}; "
            f"this run uses {checkpoint_id}. Index into a new --index-dir/--db.")
    # the version of a file key is its size:mtime; other keys (DICOMweb) are immutable
    ledger = {key: LedgerEntry(f"{size}:{mtime}" if versioned(key) else None, content_hash,
                               failed)
              for key, size, mtime, content_hash, failed in db_write.ledger_rows(session)}
    check_mode(ledger, policy.deidentifier if policy else None, f"the catalog of {index_dir}")
    return ledger, db_write.count_indexed(session)


def stored_key(policy: IngestPolicy | None):
    """How the ledger stores a record key under ``policy`` (None: as it is)."""
    return policy.deidentifier.ledger_key if policy and policy.deidentifier else None


def run_index(source, *, embedder, index_dir: str | Path, db_url: str | None = None,
              workers: int = 0, batch_size: int = 16, index_type: str = "auto",
              device: str = "cpu", policy: IngestPolicy | None = None,
              manifest: str | Path | None = None, checkpoint_every: int = 50,
              nprobe: int = DEFAULT_NPROBE, progress: bool = True, source_options: dict | None = None,
              wait: float | None = None, preview_side: int = PREVIEW_SIDE,
              copy_checkpoint: bool = False
              ) -> IndexSummary:
    """Index ``source`` into ``db_url`` + ``index_dir``; see the module docstring.

    ``source``: anything :func:`chextriev.io.sources.open_source` accepts (a folder, a manifest
    CSV, an image file, an ``http(s)://`` DICOMweb root; ``source_options`` go to it), or a
    :class:`~chextriev.io.sources.RecordSource`.
    ``embedder``: a :class:`indexer.embedder.ModelEmbedder` (or any object with its interface).
    ``workers``: decoding (and fetching) processes (0 = in this process). ``wait``: seconds to
    wait for another writer of the same catalog (None: fail at once naming it; ``math.inf``:
    forever).
    ``policy``: de-identification and the burned-in rule, applied in the decoding workers
    (:class:`indexer.decode.IngestPolicy`; default: fields as read, burned-in images skipped).
    ``preview_side``: longest side of the stored preview of each image (0: none;
    :mod:`indexer.preview_store`).
    Every index save records the bundle (:mod:`indexer.bundle`: checkpoint, detector, model,
    build parameters); ``copy_checkpoint`` copies the checkpoint into the index folder.

    Raises:
        SourceUnavailableError: the source went away mid-run (what was done is kept).
        SourceError: the source cannot be read at all (unreachable, credentials refused).
        CatalogUnavailableError: the catalog database went away (what was committed is kept).
        DiskFullError: the disk filled up (what was committed is kept).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    summary = IndexSummary()
    archive = open_archive(source, manifest=manifest, exclude=(index_dir,),
                           **(source_options or {}))
    log.info("indexing %s", archive.describe())
    writer = None
    try:
        with WritableCatalog(index_dir, db_url, wait=wait) as catalog:
            sessions = catalog.sessions
            with sessions() as session:
                ledger, n_indexed = read_ledger(session, embedder.checkpoint_id, index_dir, policy)
                store = open_store(session, index_dir, dim=int(embedder.embedding_dim), create=True)
            had_ledger = bool(ledger)
            tasks = ((record, embedder.max_input_side, known_hash, policy, preview_side)
                     for record, known_hash in pending(archive.iter_records(), ledger, summary,
                                                       stored_key(policy)))
            # The IVF quantizer is sized for the catalog as it stands; the syncer retrains once the
            # index outgrows it (indexer.sync.RETRAIN_GROWTH), so an unknown stream length is fine.
            record = BuildRecord.from_embedder(embedder, index_dir=index_dir, index_type=index_type,
                                               device=device, copy=copy_checkpoint)
            syncer = IndexSyncer(sessions, index_dir, checkpoint_id=embedder.checkpoint_id,
                                 dim=embedder.embedding_dim, index_type=index_type, device=device,
                                 nprobe=nprobe, expected_total=n_indexed, store=store, bundle=record)
            writer = CatalogWriter(sessions, embedder, summary, store=store)
            stopped, batches = _run_batches(tasks, workers, archive.connections(), batch_size,
                                            writer, syncer, checkpoint_every, summary, progress)
            del ledger
            log.info("%d record(s) discovered, %d unchanged", summary.discovered, summary.unchanged)
            if stopped is not None and not batches and not summary.indexed and not had_ledger:
                raise stopped  # nothing was ever indexed from it: no index to sync
            _checkpoint(syncer, summary)
    except Exception as error:  # a full disk or a lost database: one line, nothing lost
        problem = stop_error(error, index_dir=index_dir, db_url=db_url,
                             committed=writer.stored if writer is not None else 0)
        if problem is None:
            raise
        raise problem from error
    summary.seconds = time.perf_counter() - started
    if stopped is not None:
        raise type(stopped)(f"{stopped} (this run stored {summary.indexed} new image(s) before "
                            "stopping)")
    return summary


def _checkpoint(syncer: IndexSyncer, summary: IndexSummary) -> None:
    manifest = syncer.sync()
    summary.index_size, summary.build_id = manifest.n_vectors, manifest.build_id


def _run_batches(tasks: Iterable, workers: int, connections, batch_size: int,
                 writer: CatalogWriter, syncer: IndexSyncer, checkpoint_every: int,
                 summary: IndexSummary, progress: bool
                 ) -> tuple[SourceError | None, int]:
    """Decode, write in batches, checkpoint; returns (what stopped the source early, batches)."""
    pending_items: list[Decoded] = []
    n_pixels = 0
    batches = 0
    stopped: SourceError | None = None
    bar = tqdm(unit="img", desc="indexing", disable=not progress, smoothing=0.1)
    try:
        try:
            for decoded in _decoded_stream(tasks, workers, connections):
                if decoded.status == UNAVAILABLE:
                    stopped = SourceUnavailableError(decoded.reason or "the source went away")
                    break
                pending_items.append(decoded)
                n_pixels += decoded.pixels is not None
                bar.update(1)
                if n_pixels >= batch_size or len(pending_items) >= 8 * batch_size:
                    writer.write(pending_items)
                    pending_items, n_pixels = [], 0
                    batches += 1
                    if checkpoint_every and batches % checkpoint_every == 0:
                        _checkpoint(syncer, summary)
                    bar.set_postfix(indexed=summary.indexed, failed=summary.failed, refresh=False)
        except SourceError as error:  # the search itself failed (e.g. a QIDO-RS page)
            stopped = error
        if pending_items:
            writer.write(pending_items)
            batches += 1
    finally:
        bar.close()
    return stopped, batches
