"""Decoded files -> catalog rows + vector store rows, one transaction per batch.

What one :meth:`CatalogWriter.write` does, in a fixed number of round trips whatever the batch
size (bulk lookups with ``IN``, multi-row ``INSERT ... RETURNING``, ``executemany`` updates; no
per-row flush; the statements are :mod:`indexer.db_write`'s):

1. look up the batch's content hashes, SOPInstanceUIDs and ledger keys at once (a short read;
   the run holds the writer lock, so nobody else changes them meanwhile);
2. decide each item: unchanged (same content, only touched), duplicate of an image already in
   the catalog or earlier in the batch, or a new image row (indexed, skipped or failed);
3. embed the new frontal images (one embedder call), unless they carry model outputs already
   (``Decoded.embedded``: distributed shards) -- before the write transaction, which therefore
   lasts milliseconds, not a forward pass;
4. in ONE transaction: lock ``catalog_state``, create the missing patients and studies in bulk,
   insert the image rows (their vector slots assigned up front), write their vectors to the
   store and their previews beside it, and fsync both (:mod:`indexer.vector_store`,
   :mod:`indexer.preview_store`);
5. insert/update the ledger rows, delete image rows whose content no file holds any more, move
   ``catalog_state`` (generation, committed store length, removals) and COMMIT; only then does
   the store's committed length move. A kill anywhere before the commit loses this batch only:
   its files are not in the ledger, the store tail it wrote is overwritten by the next run.

Adding a field of ``indexer.decode.Decoded`` to the catalog: put it in :func:`image_values`
(and the column in ``indexer/db.py`` plus a migration).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from indexer import db_write
from indexer.db import (
    STATUS_FAILED,
    STATUS_INDEXED,
    STATUS_SKIPPED,
    Patient,
    Study,
    utcnow,
)
from indexer.decode import FAILED, OK, SKIPPED, Decoded, given_boxes
from indexer.preview_store import PreviewStore
from indexer.vector_store import VectorStore

log = logging.getLogger(__name__)

_STATUS = {OK: STATUS_INDEXED, SKIPPED: STATUS_SKIPPED, FAILED: STATUS_FAILED}


def ledger_key(d: Decoded) -> str:
    """The ledger identity of a decoded item (``Record.key`` when the item carries it)."""
    return d.key


def model_outputs(batch, i: int, d: Decoded) -> dict[str, Any]:
    """Row ``i`` of an embedder batch as the dict :func:`image_values` stores, boxes scaled from
    the shrunk image back to the original pixel grid."""
    height, width = d.pixels.shape
    scale = np.array([d.original_hw[1] / width, d.original_hw[0] / height] * 2, np.float32)
    return {
        "embedding": batch.embeddings[i],
        "probabilities": batch.probabilities[i],
        "region_probabilities": None if batch.region_probabilities is None
        else batch.region_probabilities[i],
        "region_embeddings": None if batch.region_embeddings is None
        else batch.region_embeddings[i],
        "boxes": np.asarray(batch.boxes[i], dtype=np.float32) * scale,
        "box_source": batch.box_sources[i],
    }


def image_values(d: Decoded, *, content_hash: str, patient_pk: int | None,
                 study_pk: int | None, uid: Any, outputs: dict | None,
                 class_names: Sequence[str], checkpoint_id: str | None,
                 slot: int | None) -> dict[str, Any]:
    """The ``images`` row of one new decoded item (``outputs``: its model outputs, or None).

    ``uid``: the writer's identifier function (the identity, or the keyed pseudonym when the run
    pseudonymises), applied to the study, series and SOP instance UIDs."""
    meta = d.meta or {}
    now = utcnow()
    status = _STATUS[d.status]
    values: dict[str, Any] = {
        "image_id": meta.get("image_id") or os.path.splitext(os.path.basename(d.key))[0],
        "source_path": d.key, "content_hash": content_hash, "file_size": d.file_size,
        "mtime_ns": d.mtime_ns, "format": d.fmt,
        # a failed image is no dedupe target: its instance may still arrive (a retried fetch)
        "sop_instance_uid": uid(meta.get("sop_instance_uid")) if status != STATUS_FAILED
        else None,
        "study_instance_uid": uid(meta.get("study_instance_uid")),
        "series_instance_uid": uid(meta.get("series_instance_uid")),
        "patient_id": patient_pk, "study_id": study_pk, "view": meta.get("view"),
        "study_date": meta.get("study_date"), "sex": meta.get("sex"), "age": meta.get("age"),
        "known_findings": meta.get("known_findings"), "status": status,
        "reason": d.reason, "thumbnail": d.thumbnail,
        "height": d.original_hw[0] if d.original_hw else None,
        "width": d.original_hw[1] if d.original_hw else None,
        "probabilities": None, "region_probabilities": None, "boxes": None, "box_source": None,
        "checkpoint_id": None, "vector_slot": slot, "region_dim": None,
        "created": now, "updated": now,
    }
    if outputs is not None:
        values["checkpoint_id"] = checkpoint_id
        # a model without a finding head (no class names) stores no predictions at all
        values["probabilities"] = {c: round(float(p), 6) for c, p in
                                   zip(class_names, np.asarray(outputs["probabilities"]))} if class_names else None
        if outputs.get("region_probabilities") is not None:
            values["region_probabilities"] = np.round(
                np.asarray(outputs["region_probabilities"], dtype=np.float64), 6).tolist()
        if outputs.get("region_embeddings") is not None:
            values["region_dim"] = int(np.asarray(outputs["region_embeddings"]).shape[1])
        boxes = np.round(np.asarray(outputs["boxes"], dtype=np.float64), 2)
        missing = np.isnan(boxes).any(axis=1)
        values["boxes"] = [None if gone else row for gone, row in zip(missing, boxes.tolist())]
        values["box_source"] = str(outputs["box_source"])
    return values


@dataclass
class _Plan:
    """What one batch will write, decided before any transaction: ``new`` items (with their
    content hash) become image rows; ``targets`` say which image each ledger key points at
    (an existing primary key, or ``("new", position in new)``)."""

    new: list[tuple[Decoded, str]] = field(default_factory=list)
    targets: list[tuple[Decoded, str, Any]] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)


class CatalogWriter:
    """Turns decoded files into catalog rows and vector store rows, one transaction a batch."""

    def __init__(self, sessions, embedder, summary, *, store: VectorStore):
        self.sessions = sessions
        self.embedder = embedder
        self.summary = summary
        self.store = store
        self.stored = 0  # new images committed (indexed rows with their vectors)
        # The previews share the store's slots and commit point (indexer.preview_store).
        self.previews = PreviewStore(store.root.parent, store.committed)

    def _key(self, identifier) -> str | None:
        if identifier is None or str(identifier).strip() == "":
            return None
        identifier = str(identifier).strip()
        return identifier  # de-identified already, in the decoding worker (indexer.decode)

    def write(self, items: list[Decoded]) -> None:
        """Embed the new frontal images among ``items``, then commit everything in one
        transaction (the model runs before it)."""
        if not items:
            return
        plan = self._plan(items)
        outputs = self._embed(plan.new)
        self._commit(plan, outputs)

    def _plan(self, items: list[Decoded]) -> _Plan:
        """Decide each item against the catalog (three bulk lookups in a short read)."""
        summary = self.summary
        keys = [ledger_key(d) for d in items]
        uids = {self._key(d.meta.get("sop_instance_uid")) for d in items
                if d.meta and d.meta.get("sop_instance_uid")}
        with self.sessions() as session:
            by_hash, by_uid, ledger = db_write.batch_lookups(
                session, keys, {d.content_hash for d in items if d.content_hash}, uids)
        plan = _Plan(ledger=ledger)
        batch_hash: dict[str, int] = {}
        batch_uid: dict[str, int] = {}
        for d, key in zip(items, keys):
            content_hash = d.content_hash or "unreadable:" + key
            uid = self._key(d.meta.get("sop_instance_uid")) if d.meta else None
            old = ledger.get(key)
            if (old is not None and old.content_hash == d.content_hash and d.pixels is None
                    and d.status == OK and d.embedded is None):
                plan.targets.append((d, key, old.image_pk))  # touched, same content
                summary.unchanged += 1
                continue
            existing = by_hash.get(content_hash) or (by_uid.get(uid) if uid else None)
            if existing is not None:
                plan.targets.append((d, key, existing))
                summary.duplicates += 1
                continue
            position = batch_hash.get(content_hash)
            if position is None and uid:
                position = batch_uid.get(uid)
            if position is not None:
                plan.targets.append((d, key, ("new", position)))
                summary.duplicates += 1
                continue
            batch_hash[content_hash] = len(plan.new)
            if uid:
                batch_uid[uid] = len(plan.new)
            plan.targets.append((d, key, ("new", len(plan.new))))
            plan.new.append((d, content_hash))
            if d.status != OK:
                summary.reasons[d.reason or _STATUS[d.status]] += 1
                if d.status == SKIPPED:
                    summary.skipped += 1
                else:
                    summary.failed += 1
        return plan

    def _embed(self, new: list[tuple[Decoded, str]]) -> list[dict | None]:
        """Model outputs of the new frontal images (one embedder call; shards carry theirs)."""
        outputs: list[dict | None] = [None] * len(new)
        to_embed = [j for j, (d, _) in enumerate(new)
                    if d.status == OK and d.embedded is None and d.pixels is not None]
        if to_embed:
            batch = self.embedder([new[j][0].pixels for j in to_embed],
                                  boxes=[given_boxes(new[j][0]) for j in to_embed])
            for i, j in enumerate(to_embed):
                outputs[j] = model_outputs(batch, i, new[j][0])
        for j, (d, _) in enumerate(new):
            if d.status == OK and d.embedded is not None:
                outputs[j] = d.embedded
        self.summary.indexed += sum(o is not None for o in outputs)
        return outputs

    def _commit(self, plan: _Plan, outputs: list[dict | None]) -> None:
        """Rows, vectors, previews and ledger of one batch in one transaction."""
        new = plan.new
        embedded = [j for j in range(len(new)) if outputs[j] is not None]
        with self.sessions() as session:
            db_write.lock_state(session, self.store.committed)
            patients: dict[str, dict] = {}
            studies: dict[str, dict] = {}
            for d, _ in new:
                key = self._key(d.meta.get("patient_id")) if d.meta else None
                if key is not None and key not in patients:
                    patients[key] = {"pseudonymised": bool(d.meta.get("pseudonymised")),
                                     "sex": d.meta.get("sex")}
            patient_pk = db_write.ensure_keyed(session, Patient, patients)
            for d, _ in new:
                key = self._key(d.meta.get("study_id")) if d.meta else None
                if key is not None and key not in studies:
                    studies[key] = {"patient_id": patient_pk.get(
                        self._key(d.meta.get("patient_id"))), "study_date": d.meta.get("study_date")}
            study_pk = db_write.ensure_keyed(session, Study, studies)
            slots = {j: self.store.committed + n for n, j in enumerate(embedded)}
            classes = tuple(self.embedder.class_names)
            rows = []
            for j, (d, content_hash) in enumerate(new):
                meta = d.meta or {}
                values = image_values(
                    d, content_hash=content_hash,
                    patient_pk=patient_pk.get(self._key(meta.get("patient_id"))),
                    study_pk=study_pk.get(self._key(meta.get("study_id"))), uid=self._key,
                    outputs=outputs[j], class_names=classes,
                    checkpoint_id=self.embedder.checkpoint_id, slot=slots.get(j))
                if values["status"] == STATUS_INDEXED and outputs[j] is None:
                    values["status"] = STATUS_FAILED  # pragma: no cover - decode gave no pixels
                    values["reason"] = "no pixels to embed"
                rows.append(values)
            new_pk = db_write.insert_images(session, rows)
            committed = self.store.committed
            if embedded:
                regions = [outputs[j].get("region_embeddings") for j in embedded]
                self.store.write(
                    [new_pk[j] for j in embedded],
                    np.stack([np.asarray(outputs[j]["embedding"], np.float32) for j in embedded]),
                    None if any(r is None for r in regions) else np.stack(regions))
                self.previews.commit(committed)
                self.previews.write([new_pk[j] for j in embedded],
                                    [new[j][0].preview for j in embedded])
                committed += len(embedded)
            removals = self._ledger(session, plan, new_pk)
            if embedded or removals:
                db_write.bump_generation(session, removals=removals, store_rows=committed)
            session.commit()
        self.stored += len(embedded)
        self.store.commit(committed)
        self.previews.commit(committed)

    def _ledger(self, session, plan: _Plan, new_pk: list[int]) -> int:
        """The ledger rows of the batch; images whose content no file holds any more leave the
        catalog. Returns how many indexed images left."""
        added, changed, previous, seen = [], [], set(), set()
        now = utcnow()
        for d, key, target in plan.targets:
            if key in seen:
                continue  # a key twice in one batch: the first one wins
            seen.add(key)
            pk = new_pk[target[1]] if isinstance(target, tuple) else target
            old = plan.ledger.get(key)
            row = {"file_size": d.file_size, "mtime_ns": d.mtime_ns,
                   "content_hash": d.content_hash, "image_pk": pk, "updated": now}
            if old is None:
                added.append({"path": key, **row})
                continue
            changed.append({"id": old.id, **row})
            if old.image_pk is not None and old.image_pk != pk:
                previous.add(old.image_pk)
        db_write.write_ledger(session, added, changed)
        dropped, removals = db_write.drop_orphans(session, previous)
        self.summary.replaced += dropped
        return removals


class WritableCatalog:
    """A catalog opened for writing: index folder created, both writer locks held
    (:mod:`indexer.lock`), schema created or checked. Use as a context manager::

        with WritableCatalog(index_dir, db_url, wait=None) as catalog:
            catalog.sessions, catalog.engine, catalog.db_url
    """

    def __init__(self, index_dir, db_url: str | None = None, *, wait: float | None = None,
                 create: bool = True):
        from pathlib import Path

        from indexer.db import default_db_url

        self.index_dir = Path(index_dir)
        self.db_url = db_url or default_db_url(self.index_dir)
        self.wait = wait
        self.create = create
        self.engine = None
        self.sessions = None
        self._lock = None

    def __enter__(self) -> Self:
        from indexer import migrations
        from indexer.engine import make_engine, make_sessionmaker
        from indexer.lock import CatalogLock

        if self.create:
            self.index_dir.mkdir(parents=True, exist_ok=True)
        # no pre-ping: a run stops at the first dead connection (its advisory lock died with
        # it) and the next run resumes; readers' engines make dropped connections again
        self.engine = make_engine(self.db_url, create=self.create, check=False, schema=False,
                                  pre_ping=False)
        try:
            self._lock = CatalogLock(self.index_dir, engine=self.engine, db_url=self.db_url,
                                     wait=self.wait).acquire()
            migrations.ensure_current(self.engine, self.db_url, create=self.create)
            self._lock.note_holder()
        except BaseException:
            self.close()
            raise
        self.sessions = make_sessionmaker(self.engine)
        return self

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.engine is not None:
            self.engine.dispose()

    def __exit__(self, *exc) -> None:
        self.close()
