"""Keep the Faiss index and the search columns in step with the catalog (the database + the
vector store are the durable source of truth; the index and the column files are derived).

* :class:`IndexSyncer` brings the saved index to the catalog's ``indexed`` rows. It keeps the
  index open between calls (one per run), so a checkpoint costs what was added since the last
  one: the rows whose vector slot lies past the slots the manifest covers are read from the
  vector store and saved as a new segment, and their search columns are appended to the
  column files (:mod:`indexer.columns`). Only when images left the indexed set since the last
  build (``catalog_state.removals`` moved), or the index is unusable (other checkpoint, type,
  dimension, an IVF trained for far fewer vectors, a corrupt or missing build), does it diff all
  ids or rebuild from the store.
* :func:`sync_index` is the one-shot form; :func:`repair` rebuilds from scratch.
* :func:`remove_images` marks images ``removed`` (their files stay known, so reruns do not add
  them back) and syncs the index.

``index verify`` is :mod:`indexer.verify`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from chextriev.errors import ChextrievError
from indexer import columns as cols
from indexer import db_read, db_write
from indexer.bundle import BUNDLE_KEY
from indexer.db import catalog_state
from indexer.exact import CHUNK, StoreExact, read_vectors, unit_rows
from indexer.faiss_factory import default_nlist, resolve_index_type
from indexer.manifest import COLUMNS, IndexStateError, Manifest
from indexer.vector_index import VectorIndex
from indexer.vector_store import VectorStore, open_store

log = logging.getLogger(__name__)

#: An IVF trained for ``trained_for`` vectors is retrained past this many times that count.
RETRAIN_GROWTH = 16


class IndexSyncer:
    """Keeps one open index in step with the catalog across the checkpoints of a run."""

    def __init__(self, sessions, index_dir: str | Path, *, checkpoint_id: str | None, dim: int,
                 index_type: str = "auto", device: str = "cpu", nprobe: int = 32,
                 expected_total: int = 0, store: VectorStore | None = None, bundle=None):
        self.sessions = sessions
        #: ``bundle``: an :class:`indexer.bundle.BuildRecord` (or None: the previous manifest's
        #: bundle is carried over by ``VectorIndex.save``), recorded at every save.
        self.bundle = bundle
        self.index_dir = Path(index_dir)
        self.checkpoint_id = checkpoint_id
        self.dim = int(dim)
        self.index_type = index_type
        self.device = device
        self.nprobe = int(nprobe)
        self.expected_total = int(expected_total)
        self.store = store
        self.index: VectorIndex | None = None
        self._loaded = False

    def _load(self) -> VectorIndex | None:
        try:
            return VectorIndex.load(self.index_dir, device=self.device, mmap=True, lazy=True)
        except IndexStateError as error:
            if (self.index_dir / "manifest.json").exists():
                log.warning("rebuilding the index: %s", error)
            return None

    def _usable(self, index: VectorIndex | None, n_after: int) -> bool:
        if index is None or index.manifest is None:
            return False
        manifest = index.manifest
        wanted = resolve_index_type(self.index_type, n_after)
        if index.dim != self.dim or manifest.checkpoint_id != self.checkpoint_id:
            return False
        if index.index_type != wanted and not (index.index_type == "flat" and n_after < 2):
            return False
        if index.trained_info:
            trained_for = int(index.trained_info.get("trained_for", 0))
            if n_after > RETRAIN_GROWTH * max(trained_for, 1):
                log.info("index trained for %d vectors, now %d: retraining", trained_for, n_after)
                return False
        if manifest.nprobe != self.nprobe:
            index.nprobe = self.nprobe
        return True

    def sync(self, *, rebuild: bool = False) -> Manifest:
        """Make the saved index reflect the catalog; returns the manifest (unchanged when the
        index already reflects the catalog's generation)."""
        with self.sessions() as session:
            state = catalog_state(session)
            generation, store_rows, removals = state.generation, state.store_rows, state.removals
            if self.store is None or self.store.committed != store_rows:
                self.store = open_store(session, self.index_dir, dim=self.dim, create=True)
            if not self._loaded or rebuild:
                self.index = None if rebuild else self._load()
                self._loaded = True
            index = self.index
            manifest = index.manifest if index is not None else None
            if (not rebuild and manifest is not None and manifest.catalog_generation == generation
                    and manifest.checkpoint_id == self.checkpoint_id
                    and manifest.store_rows == store_rows and manifest.nprobe == self.nprobe
                    and manifest.columns is not None):
                return manifest
            fast = (manifest is not None and manifest.removals == removals
                    and manifest.store_rows <= store_rows)
            previous = None if rebuild else _previous_columns(self.index_dir, manifest,
                                                                self.checkpoint_id)
            names = previous.class_names if previous is not None else \
                db_read.first_class_names(session)
            connection = session.connection()
            added = None
            if fast:
                added = cols.from_rows(db_read.column_rows(
                    connection, names, from_slot=manifest.store_rows), names,
                    **_vocabularies(previous))
                n_after = index.ntotal + len(added)
            else:
                n_after = db_write.count_indexed(session)
            usable = self._usable(index, n_after)
            if usable and fast:
                by_slot = np.argsort(added.slots, kind="stable")
                new_ids, new_slots = added.ids[by_slot], added.slots[by_slot]
                index.add(new_ids, read_vectors(self.store, new_ids, new_slots))
                log.info("index: +%d vectors -> %d (%d segments)", len(new_ids), index.ntotal,
                         len(index.segments))
                columns = _append(self.index_dir, previous, manifest, added, connection, names)
            elif usable:
                ids, slots = db_write.indexed_slots(session)
                to_remove = np.setdiff1d(index.ids, ids)
                keep = ~np.isin(ids, index.ids)
                index.remove(to_remove)
                index.add(ids[keep], read_vectors(self.store, ids[keep], slots[keep]))
                log.info("index updated: +%d -%d -> %d vectors", int(keep.sum()), len(to_remove),
                         index.ntotal)
                columns = _rewrite(self.index_dir, previous, ids, connection, names)
            else:
                index = self._rebuild(session)
                if fast:
                    columns = _append(self.index_dir, previous, manifest, added, connection, names)
                else:
                    columns = _rewrite(self.index_dir, previous, index.ids, connection, names)
            self.index = index
            extra = {COLUMNS: columns}
            if self.bundle is not None:
                extra[BUNDLE_KEY] = self.bundle.as_dict()
            manifest = index.save(
                self.index_dir, checkpoint_id=self.checkpoint_id, catalog_generation=generation,
                store_rows=store_rows, removals=removals, db_state=f"generation:{generation}",
                **extra)
            db_write.record_build(
                session, checkpoint_id=self.checkpoint_id, embedding_dim=self.dim,
                index_type=index.index_type, factory=index.factory, n_vectors=index.ntotal,
                db_state=manifest.db_state, build_dir=manifest.build_id)
            session.commit()
            return manifest

    def _rebuild(self, session) -> VectorIndex:
        """A new index from every indexed row, vectors streamed from the store in chunks; IVF
        types trained on a sample sized for the expected final count."""
        ids, slots = db_write.indexed_slots(session)
        n = len(ids)
        expected = max(n, self.expected_total)
        concrete = resolve_index_type(self.index_type, n)
        if concrete != "flat" and n < 2:
            concrete = "flat"
        sample = None
        if concrete != "flat":
            limit = max(64 * default_nlist(expected), 65_536)
            pick = np.sort(np.random.default_rng(0).choice(n, min(n, limit), replace=False))
            sample = read_vectors(self.store, ids[pick], slots[pick])
        index = VectorIndex.create(concrete, self.dim, train_vectors=sample, expected=expected,
                                   device=self.device, nprobe=self.nprobe)
        del sample
        # One Faiss structure filled chunk by chunk (sequential store reads): memory stays at
        # the index size, no copy.
        target = index.empty()
        order = np.argsort(slots, kind="stable")
        for start in range(0, n, CHUNK):
            part = order[start:start + CHUNK]
            target.add_with_ids(unit_rows(read_vectors(self.store, ids[part], slots[part])),
                                ids[part])
        if n:
            index.add_segment(ids, None, index=target)
        if index.exact is None:
            index.exact = StoreExact(self.store, ids, slots)
        log.info("index built: %s (%s), %d vectors", index.index_type, index.factory, index.ntotal)
        return index


# ---------------------------------------------------------------------- search columns
def _previous_columns(index_dir: Path, manifest: Manifest | None,
                      checkpoint_id: str | None) -> cols.Columns | None:
    """The column set of the previous build of this checkpoint, mapped (None: none, empty, or
    unreadable: the next set is read from the catalog)."""
    if manifest is None or manifest.columns is None or manifest.checkpoint_id != checkpoint_id:
        return None
    try:
        found = cols.Columns.open(index_dir, manifest.columns)
    except (OSError, ValueError, KeyError) as error:
        log.warning("rewriting the search columns: the previous ones are unreadable (%s)", error)
        return None
    return found if len(found) else None


def _vocabularies(previous: cols.Columns | None) -> dict:
    return {} if previous is None else {"views": previous.views, "sexes": previous.sexes}


def _append(index_dir: Path, previous: cols.Columns | None, manifest: Manifest,
            added: cols.Columns, connection, names) -> dict:
    """The columns of a build that only added images: appended to the previous set when their
    ids follow its last one, else a new set of both."""
    if previous is None:  # a build made before column files: every row once
        return cols.write(index_dir, cols.from_rows(db_read.column_rows(connection, names), names))
    last = int(previous.ids[-1]) if len(previous) else -1
    if not len(added) or int(added.ids[0]) > last:
        return cols.write(index_dir, added, append_to=manifest.columns)
    return cols.write(index_dir, cols.concat(previous, added))


def _rewrite(index_dir: Path, previous: cols.Columns | None, ids: np.ndarray, connection,
             names) -> dict:
    """A new column set for the indexed ``ids``: the previous set's rows still indexed (an
    indexed row's columns never change), the others read from the catalog."""
    if previous is None:
        return cols.write(index_dir, cols.from_rows(db_read.column_rows(connection, names), names))
    keep = np.isin(previous.ids, ids)
    fresh = np.setdiff1d(ids, previous.ids)
    added = cols.from_rows(db_read.column_rows(connection, names, ids=fresh.tolist()), names,
                           **_vocabularies(previous))
    return cols.write(index_dir, cols.concat(previous, added, keep))


# ---------------------------------------------------------------------- one-shot forms
def sync_index(sessions, index_dir: str | Path, *, checkpoint_id: str | None, dim: int,
               index_type: str = "auto", device: str = "cpu", nprobe: int = 32,
               rebuild: bool = False, expected_total: int = 0) -> Manifest:
    """One-shot :meth:`IndexSyncer.sync`."""
    return IndexSyncer(sessions, index_dir, checkpoint_id=checkpoint_id, dim=dim,
                       index_type=index_type, device=device, nprobe=nprobe,
                       expected_total=expected_total).sync(rebuild=rebuild)


def repair(sessions, index_dir: str | Path, *, device: str = "cpu",
           index_type: str | None = None, nprobe: int | None = None) -> Manifest:
    """Rebuild the index (and the search columns) from the catalog, whatever state the index
    folder is in."""
    index_dir = Path(index_dir)
    try:
        old = Manifest.read(index_dir)
    except IndexStateError:
        old = None
    with sessions() as session:
        checkpoints = db_write.indexed_checkpoints(session)
        store = open_store(session, index_dir)
    if len(checkpoints) > 1:
        raise ChextrievError(f"the catalog mixes checkpoints {checkpoints}: index into a new "
                             "--index-dir")
    if store is None:
        raise ChextrievError(f"no vector store in {index_dir}: nothing to rebuild from")
    return sync_index(sessions, index_dir, checkpoint_id=checkpoints[0] if checkpoints else
                      (old.checkpoint_id if old else None), dim=store.dim,
                      index_type=index_type or (old.index_type if old else "auto"),
                      device=device, nprobe=nprobe or (old.nprobe if old else 32), rebuild=True)


def remove_images(sessions, index_dir: str | Path, ids: Iterable[int | str], *,
                  device: str = "cpu") -> int:
    """Mark ``ids`` (database ids, or dataset image ids as strings) removed and sync the index.

    Returns the number of images removed. Unknown ids raise ChextrievError listing them.
    """
    with sessions() as session:
        found, unknown = db_write.resolve_images(session, list(ids))
        if unknown:
            raise ChextrievError(f"not in the catalog: {', '.join(unknown[:10])}")
        removed = db_write.mark_removed(session, found, "removed by `chextriev index remove`")
        session.commit()
    manifest = Manifest.read(index_dir)
    sync_index(sessions, index_dir, checkpoint_id=manifest.checkpoint_id, dim=manifest.dim,
               index_type=manifest.index_type, device=device, nprobe=manifest.nprobe)
    return removed
