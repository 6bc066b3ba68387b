"""Archive -> catalog + index: records from the source (``chextriev.io.sources``, the one reader
path), decoding workers, batched embedding, one transaction per batch, index checkpoints.

Durability (why kill -9 at any moment is safe):

1. each batch (its embeddings, predictions, thumbnails, the skipped/failed/duplicate files seen
   since the previous batch, and their ``sources`` ledger rows) is written in ONE transaction;
   a killed run loses at most the uncommitted batch, whose files are not in the ledger and are
   therefore processed again by the next run;
2. the database stores the exact embedding of every indexed image: the Faiss index is derived
   state, re-synced from the database every ``checkpoint_every`` batches and at the end
   (:func:`indexer.sync.sync_index`), saved atomically with a manifest recording the database
   state it reflects;
3. every run ends with a sync, so a rerun after a kill (even one with nothing new to index) makes
   the index agree with the database again.

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
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from tqdm.auto import tqdm

from chextriev.errors import ChextrievError, SourceError, SourceUnavailableError
from indexer.db import (
    STATUS_FAILED,
    STATUS_INDEXED,
    STATUS_SKIPPED,
    Image,
    Patient,
    Source,
    Study,
    default_db_url,
    make_engine,
    make_sessionmaker,
)
from indexer.decode import (
    FAILED,
    OK,
    SKIPPED,
    UNAVAILABLE,
    Decoded,
    IngestPolicy,
    decode_task,
    given_boxes,
    init_worker,
)
from indexer.discovery import LedgerEntry, open_archive, pending
from indexer.sync import sync_index

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


#: Records taken from the source at a time (bounds memory on a million-file archive).
_CHUNK = 512


def _decoded_stream(tasks: Iterable, workers: int, connections=()) -> Iterator[Decoded]:
    tasks = iter(tasks)
    first = list(itertools.islice(tasks, _CHUNK))
    if workers <= 0 or len(first) < 2:
        yield from map(decode_task, itertools.chain(first, tasks))
        return
    context = mp.get_context("spawn")  # no fork after torch threads exist
    with context.Pool(workers, initializer=init_worker, initargs=(tuple(connections),)) as pool:
        chunk = first
        while chunk:
            chunksize = max(1, min(16, len(chunk) // (workers * 8) or 1))
            yield from pool.imap(decode_task, chunk, chunksize=chunksize)
            chunk = list(itertools.islice(tasks, _CHUNK))


def _read_ledger(session) -> dict[str, LedgerEntry]:
    """``{key: LedgerEntry}`` of every ledger row (the version of a file key is its size:mtime)."""
    rows = session.execute(
        select(Source.path, Source.file_size, Source.mtime_ns, Source.content_hash, Image.status)
        .outerjoin(Image, Image.id == Source.image_pk))
    return {key: LedgerEntry(f"{size}:{mtime}" if os.path.isabs(key) else None, content_hash,
                             status == STATUS_FAILED)
            for key, size, mtime, content_hash, status in rows}


class _Writer:
    """Turns decoded files into database rows, one transaction per batch."""

    def __init__(self, sessions, embedder, summary: IndexSummary):
        self.sessions = sessions
        self.embedder = embedder
        self.summary = summary

    def _key(self, identifier: str | None) -> str | None:
        if identifier is None or str(identifier).strip() == "":
            return None
        return str(identifier).strip()

    def _patient(self, session, meta: dict) -> int | None:
        key = self._key(meta.get("patient_id"))
        if key is None:
            return None
        pk = session.scalar(select(Patient.id).where(Patient.key == key))
        if pk is None:
            patient = Patient(key=key, pseudonymised=bool(meta.get("pseudonymised")), sex=meta.get("sex"))
            session.add(patient)
            session.flush()
            pk = patient.id
        return pk

    def _study(self, session, meta: dict, patient_pk: int | None) -> int | None:
        key = self._key(meta.get("study_id"))
        if key is None:
            return None
        pk = session.scalar(select(Study.id).where(Study.key == key))
        if pk is None:
            study = Study(key=key, patient_id=patient_pk, study_date=meta.get("study_date"))
            session.add(study)
            session.flush()
            pk = study.id
        return pk

    def write(self, items: list[Decoded]) -> None:
        """Embed the new frontal images among ``items`` and commit everything in one transaction."""
        if not items:
            return
        with self.sessions() as session:
            hashes = [d.content_hash for d in items if d.content_hash]
            uids = [self._key(d.meta.get("sop_instance_uid")) for d in items
                    if d.meta.get("sop_instance_uid")]
            by_hash = dict(session.execute(
                select(Image.content_hash, Image.id).where(Image.content_hash.in_(hashes))).all()) if hashes else {}
            by_uid = dict(session.execute(
                select(Image.sop_instance_uid, Image.id).where(Image.sop_instance_uid.in_(uids))).all()) if uids else {}
            ledger = {s.path: s for s in session.scalars(
                select(Source).where(Source.path.in_([d.key for d in items])))}
            # Decide each item: duplicate, content unchanged, or new image row.
            new_rows: list[tuple[Decoded, Image]] = []
            batch_hash: dict[str, Image] = {}
            batch_uid: dict[str, Image] = {}
            targets: list[tuple[Decoded, int | Image | None]] = []
            for d in items:
                content_hash = d.content_hash or "unreadable:" + d.key
                uid = self._key(d.meta.get("sop_instance_uid"))
                old = ledger.get(d.key)
                if old is not None and old.content_hash == d.content_hash and d.pixels is None \
                        and d.status == OK:
                    targets.append((d, old.image_pk))  # touched, same content
                    self.summary.unchanged += 1
                    continue
                existing = by_hash.get(content_hash) or (by_uid.get(uid) if uid else None) \
                    or batch_hash.get(content_hash) or (batch_uid.get(uid) if uid else None)
                if existing is not None:
                    targets.append((d, existing))
                    self.summary.duplicates += 1
                    continue
                image = self._image_row(session, d, content_hash)
                batch_hash[content_hash] = image
                if uid:
                    batch_uid[uid] = image
                new_rows.append((d, image))
                targets.append((d, image))
            to_embed = [(d, image) for d, image in new_rows
                        if image.status == STATUS_INDEXED and d.embedded is None]
            if to_embed:
                self._embed(to_embed)
            for d, image in new_rows:
                if image.status == STATUS_INDEXED and d.embedded is not None:
                    self._store(image, d.embedded)
            session.flush()
            for d, target in targets:
                image_pk = target.id if isinstance(target, Image) else target
                old = ledger.get(d.key)
                if old is None:
                    session.add(Source(path=d.key, file_size=d.file_size, mtime_ns=d.mtime_ns,
                                       content_hash=d.content_hash, image_pk=image_pk))
                    continue
                previous = old.image_pk
                old.file_size, old.mtime_ns = d.file_size, d.mtime_ns
                old.content_hash, old.image_pk = d.content_hash, image_pk
                if previous is not None and previous != image_pk:
                    session.flush()
                    others = session.scalar(select(func.count(Source.id)).where(
                        Source.image_pk == previous))
                    if not others:
                        session.delete(session.get(Image, previous))
                        self.summary.replaced += 1
            session.commit()

    def _image_row(self, session, d: Decoded, content_hash: str) -> Image:
        meta = d.meta
        patient_pk = self._patient(session, meta) if meta else None
        status = {OK: STATUS_INDEXED, SKIPPED: STATUS_SKIPPED, FAILED: STATUS_FAILED}[d.status]
        if status != STATUS_INDEXED:
            self.summary.reasons[d.reason or status] += 1
            if status == STATUS_SKIPPED:
                self.summary.skipped += 1
            else:
                self.summary.failed += 1
        image = Image(
            image_id=meta.get("image_id") or os.path.splitext(os.path.basename(d.key))[0],
            source_path=d.key, content_hash=content_hash, file_size=d.file_size,
            mtime_ns=d.mtime_ns, format=d.fmt,
            # a failed image is no dedupe target: its instance may still arrive (a retried fetch)
            sop_instance_uid=self._key(meta.get("sop_instance_uid")) if status != STATUS_FAILED
            else None,
            study_instance_uid=self._key(meta.get("study_instance_uid")),
            series_instance_uid=self._key(meta.get("series_instance_uid")),
            patient_id=patient_pk, study_id=self._study(session, meta, patient_pk) if meta else None,
            view=meta.get("view"), study_date=meta.get("study_date"), sex=meta.get("sex"),
            age=meta.get("age"), known_findings=meta.get("known_findings"), status=status,
            reason=d.reason, thumbnail=d.thumbnail,
            height=d.original_hw[0] if d.original_hw else None,
            width=d.original_hw[1] if d.original_hw else None,
        )
        session.add(image)
        return image

    def _embed(self, rows: list[tuple[Decoded, Image]]) -> None:
        batch = self.embedder([d.pixels for d, _ in rows], boxes=[given_boxes(d) for d, _ in rows])
        for i, (d, image) in enumerate(rows):
            height, width = d.pixels.shape
            scale = np.array([d.original_hw[1] / width, d.original_hw[0] / height] * 2, np.float32)
            self._store(image, {
                "embedding": batch.embeddings[i],
                "probabilities": batch.probabilities[i],
                "region_probabilities": None if batch.region_probabilities is None
                else batch.region_probabilities[i],
                "region_embeddings": None if batch.region_embeddings is None
                else batch.region_embeddings[i],
                "boxes": np.asarray(batch.boxes[i], dtype=np.float32) * scale,
                "box_source": batch.box_sources[i],
            })

    def _store(self, image: Image, out: dict) -> None:
        """Write one image's model outputs (see ``Decoded.embedded``) into its row."""
        classes = tuple(self.embedder.class_names)
        image.embedding = np.asarray(out["embedding"], dtype=np.float32).tobytes()
        image.checkpoint_id = self.embedder.checkpoint_id
        image.probabilities = {c: round(float(p), 6)
                               for c, p in zip(classes, np.asarray(out["probabilities"]))}
        if out.get("region_probabilities") is not None:
            image.region_probabilities = np.round(
                np.asarray(out["region_probabilities"], dtype=np.float64), 6).tolist()
        if out.get("region_embeddings") is not None:
            region = np.asarray(out["region_embeddings"], dtype=np.float16)
            image.region_embedding = region.tobytes()
            image.region_dim = int(region.shape[1])
        image.boxes = [None if np.isnan(row).any() else [round(float(v), 2) for v in row]
                       for row in np.asarray(out["boxes"], dtype=np.float32)]
        image.box_source = str(out["box_source"])
        self.summary.indexed += 1


def run_index(source, *, embedder, index_dir: str | Path, db_url: str | None = None,
              workers: int = 0, batch_size: int = 16, index_type: str = "auto",
              device: str = "cpu", policy: IngestPolicy | None = None,
              manifest: str | Path | None = None, checkpoint_every: int = 50,
              nprobe: int = 32, progress: bool = True, source_options: dict | None = None
              ) -> IndexSummary:
    """Index ``source`` into ``db_url`` + ``index_dir``; see the module docstring.

    ``source``: anything :func:`chextriev.io.sources.open_source` accepts (a folder, a manifest
    CSV, an image file, an ``http(s)://`` DICOMweb root; ``source_options`` go to it), or a
    :class:`~chextriev.io.sources.RecordSource`.
    ``embedder``: a :class:`indexer.embedder.ModelEmbedder` (or any object with its interface).
    ``workers``: decoding (and fetching) processes (0 = in this process).
    ``policy``: de-identification and the burned-in rule, applied in the decoding workers
    (:class:`indexer.decode.IngestPolicy`; default: fields as read, burned-in images skipped).

    Raises:
        SourceUnavailableError: the source went away mid-run (what was done is kept).
        SourceError: the source cannot be read at all (unreachable, credentials refused).
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    archive = open_archive(source, manifest=manifest, exclude=(index_dir,),
                           **(source_options or {}))
    log.info("indexing %s", archive.describe())
    engine = make_engine(db_url or default_db_url(index_dir))
    sessions = make_sessionmaker(engine)
    summary = IndexSummary()
    with sessions() as session:
        others = set(session.scalars(select(Image.checkpoint_id).where(
            Image.status == STATUS_INDEXED, Image.checkpoint_id != embedder.checkpoint_id).distinct()))
        ledger = _read_ledger(session)
    if others:
        raise ChextrievError(
            f"{index_dir} already holds images embedded with checkpoint(s) {sorted(others)}; "
            f"this run uses {embedder.checkpoint_id}. Index into a new --index-dir/--db.")
    max_side = max(256, 2 * int(getattr(embedder, "image_size", 512)))
    tasks = ((record, max_side, known_hash, policy)
             for record, known_hash in pending(archive.iter_records(), ledger, summary))

    def checkpoint() -> None:
        manifest_ = sync_index(sessions, index_dir, checkpoint_id=embedder.checkpoint_id,
                               dim=embedder.embedding_dim, index_type=index_type, device=device,
                               nprobe=nprobe)
        summary.index_size, summary.build_id = manifest_.n_vectors, manifest_.build_id

    writer = _Writer(sessions, embedder, summary)
    pending_items: list[Decoded] = []
    n_pixels = 0
    batches = 0
    stopped: SourceError | None = None
    bar = tqdm(unit="img", desc="indexing", disable=not progress, smoothing=0.1)
    try:
        try:
            for decoded in _decoded_stream(tasks, workers, archive.connections()):
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
                        checkpoint()
                    bar.set_postfix(indexed=summary.indexed, failed=summary.failed, refresh=False)
        except SourceError as error:  # the search itself failed (e.g. a QIDO-RS page)
            stopped = error
        writer.write(pending_items)
    finally:
        bar.close()
    log.info("%d record(s) discovered, %d unchanged", summary.discovered, summary.unchanged)
    if stopped is not None and not batches and not pending_items and not ledger:
        engine.dispose()
        raise stopped  # nothing was ever indexed from it: no index to sync
    checkpoint()
    summary.seconds = time.perf_counter() - started
    engine.dispose()
    if stopped is not None:
        raise type(stopped)(f"{stopped} (this run stored {summary.indexed} new image(s) before "
                            "stopping)")
    return summary
