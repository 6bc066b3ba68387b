"""Keep the Faiss index in step with the catalog (the database + the vector store are the
durable source of truth; the index is derived state).

* :class:`IndexSyncer` brings the saved index to the catalog's ``indexed`` rows. It keeps the
  index open between calls (one per run), so a checkpoint costs what was added since the last
  one: the rows whose vector slot lies past the slots the manifest covers are read from the
  vector store and saved as a new segment. Only when images left the indexed set since the last
  build (``catalog_state.removals`` moved), or the index is unusable (other checkpoint, type,
  dimension, an IVF trained for far fewer vectors, a corrupt or missing build), does it diff all
  ids or rebuild from the store.
* :func:`sync_index` is the one-shot form; :func:`repair` rebuilds from scratch.
* :func:`verify` checks the payload: checksums of every index file against the manifest, the
  ids inside the Faiss structures against the ids files and the database (both directions), the
  vectors inside the index against the catalog's embeddings (all, or a random sample), and the
  vector store against the database.
* :func:`remove_images` marks images ``removed`` (their files stay known, so reruns do not add
  them back) and syncs the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import func, select, update

from chextriev.errors import ChextrievError
from chextriev.files import sha256_file
from indexer.bundle import BUNDLE_KEY
from indexer.db import (
    STATUS_INDEXED,
    STATUS_REMOVED,
    Image,
    IndexBuild,
    bump_generation,
    catalog_state,
)
from indexer.preview_store import PreviewStore
from indexer.vector_index import (
    IndexStateError,
    Manifest,
    Segment,
    VectorIndex,
    new_segment_name,
    normalise,
    resolve_index_type,
)
from indexer.vector_store import StoreError, VectorStore

log = logging.getLogger(__name__)

_CHUNK = 50_000
#: An IVF trained for ``trained_for`` vectors is retrained past this many times that count.
RETRAIN_GROWTH = 16


class StoreExact:
    """Exact vectors of the indexed images, read from the vector store by slot."""

    def __init__(self, store: VectorStore, ids: np.ndarray, slots: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.store = store
        self.ids = np.asarray(ids, np.int64)[order]
        self.slots = np.asarray(slots, np.int64)[order]

    def vectors(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.full((len(ids), self.store.dim), np.nan, np.float32)
        if len(self.ids) and len(ids):
            pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
            ok = self.ids[pos] == ids
            if ok.any():
                out[ok] = self.store.embeddings(self.slots[pos[ok]])
        return out


def indexed_slots(session) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, slots)`` of every ``indexed`` row with a stored vector, sorted by id."""
    rows = session.execute(select(Image.id, Image.vector_slot).where(
        Image.status == STATUS_INDEXED).order_by(Image.id)).all()
    missing = [pk for pk, slot in rows if slot is None]
    if missing:
        raise ChextrievError(f"{len(missing)} image(s) marked indexed have no stored embedding "
                             f"(first: {missing[:5]}); run `chextriev index repair`")
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    slots = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    return ids, slots


def indexed_ids(session) -> np.ndarray:
    """Sorted ids of the ``indexed`` rows, int64."""
    return np.fromiter(session.scalars(select(Image.id).where(
        Image.status == STATUS_INDEXED).order_by(Image.id)), dtype=np.int64)


def read_vectors(store: VectorStore, ids: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Embeddings of ``ids`` at ``slots`` ``(n, D)``; checks that each slot holds its id."""
    out = np.empty((len(ids), store.dim), np.float32)
    for start in range(0, len(ids), _CHUNK):
        part = slots[start:start + _CHUNK]
        keys = store.keys(part)
        wrong = keys != ids[start:start + _CHUNK]
        if wrong.any():
            first = int(np.flatnonzero(wrong)[0])
            raise StoreError(f"vector store slot {int(part[first])} holds image "
                             f"{int(keys[first])}, the catalog says {int(ids[start + first])}")
        out[start:start + len(part)] = store.embeddings(part)
    return out


def open_store(session, index_dir: Path, *, dim: int | None = None,
               create: bool = False) -> VectorStore | None:
    state = catalog_state(session)
    if not VectorStore.exists(index_dir) and not state.store_rows and not create:
        return None
    return VectorStore.open(index_dir, committed=state.store_rows, dim=dim, create=create)


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
                    and manifest.store_rows == store_rows and manifest.nprobe == self.nprobe):
                return manifest
            fast = (manifest is not None and manifest.removals == removals
                    and manifest.store_rows <= store_rows)
            new_ids = new_slots = None
            if fast:
                rows = session.execute(
                    select(Image.id, Image.vector_slot)
                    .where(Image.status == STATUS_INDEXED, Image.vector_slot >= manifest.store_rows)
                    .order_by(Image.vector_slot)).all()
                new_ids = np.array([r[0] for r in rows], np.int64)
                new_slots = np.array([r[1] for r in rows], np.int64)
                n_after = index.ntotal + len(new_ids)
            else:
                n_after = int(session.scalar(select(func.count(Image.id)).where(
                    Image.status == STATUS_INDEXED)))
            usable = self._usable(index, n_after)
            if usable and fast:
                index.add(new_ids, read_vectors(self.store, new_ids, new_slots))
                log.info("index: +%d vectors -> %d (%d segments)", len(new_ids), index.ntotal,
                         len(index.segments))
            elif usable:
                ids, slots = indexed_slots(session)
                to_remove = np.setdiff1d(index.ids, ids)
                keep = ~np.isin(ids, index.ids)
                index.remove(to_remove)
                index.add(ids[keep], read_vectors(self.store, ids[keep], slots[keep]))
                log.info("index updated: +%d -%d -> %d vectors", int(keep.sum()), len(to_remove),
                         index.ntotal)
            else:
                index = self._rebuild(session)
            self.index = index
            extra = {} if self.bundle is None else {BUNDLE_KEY: self.bundle.as_dict()}
            manifest = index.save(
                self.index_dir, checkpoint_id=self.checkpoint_id, catalog_generation=generation,
                store_rows=store_rows, removals=removals, db_state=f"generation:{generation}",
                **extra)
            session.add(IndexBuild(
                checkpoint_id=self.checkpoint_id, embedding_dim=self.dim,
                index_type=index.index_type, factory=index.factory, n_vectors=index.ntotal,
                db_state=manifest.db_state, build_dir=manifest.build_id))
            session.commit()
            return manifest

    def _rebuild(self, session) -> VectorIndex:
        """A new index from every indexed row, vectors streamed from the store in chunks; IVF
        types trained on a sample sized for the expected final count."""
        ids, slots = indexed_slots(session)
        n = len(ids)
        expected = max(n, self.expected_total)
        concrete = resolve_index_type(self.index_type, n)
        if concrete != "flat" and n < 2:
            concrete = "flat"
        sample = None
        if concrete != "flat":
            from indexer.vector_index import default_nlist

            limit = max(64 * default_nlist(expected), 65_536)
            pick = np.sort(np.random.default_rng(0).choice(n, min(n, limit), replace=False))
            sample = read_vectors(self.store, ids[pick], slots[pick])
        index = VectorIndex.create(concrete, self.dim, train_vectors=sample, expected=expected,
                                   device=self.device, nprobe=self.nprobe)
        del sample
        # One Faiss structure filled chunk by chunk (sequential store reads): memory stays at
        # the index size, no copy.
        target = index._empty()
        order = np.argsort(slots, kind="stable")
        for start in range(0, n, _CHUNK):
            part = order[start:start + _CHUNK]
            target.add_with_ids(normalise(read_vectors(self.store, ids[part], slots[part])),
                                ids[part])
        if n:
            index.segments = [Segment(new_segment_name(), n, index=target, ids=ids, mmap=False)]
        if index.exact is None:
            index.exact = StoreExact(self.store, ids, slots)
        log.info("index built: %s (%s), %d vectors", index.index_type, index.factory, index.ntotal)
        return index


def sync_index(sessions, index_dir: str | Path, *, checkpoint_id: str | None, dim: int,
               index_type: str = "auto", device: str = "cpu", nprobe: int = 32,
               rebuild: bool = False, expected_total: int = 0) -> Manifest:
    """One-shot :meth:`IndexSyncer.sync`."""
    return IndexSyncer(sessions, index_dir, checkpoint_id=checkpoint_id, dim=dim,
                       index_type=index_type, device=device, nprobe=nprobe,
                       expected_total=expected_total).sync(rebuild=rebuild)


def repair(sessions, index_dir: str | Path, *, device: str = "cpu",
           index_type: str | None = None, nprobe: int | None = None) -> Manifest:
    """Rebuild the index from the catalog (whatever state the index folder is in)."""
    index_dir = Path(index_dir)
    try:
        old = Manifest.read(index_dir)
    except IndexStateError:
        old = None
    with sessions() as session:
        checkpoints = sorted(c for c in session.scalars(select(Image.checkpoint_id).where(
            Image.status == STATUS_INDEXED).distinct()) if c)
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


# ---------------------------------------------------------------------- verify
def verify(sessions, index_dir: str | Path, *, sample: int | None = None, seed: int = 0
           ) -> list[str]:
    """Differences between the catalog and the saved index (empty list: they agree).

    ``sample``: compare the vectors of this many random indexed images (default: all).
    """
    index_dir = Path(index_dir)
    problems: list[str] = []
    try:
        manifest = Manifest.read(index_dir)
    except IndexStateError as error:
        return [str(error)]
    for rel, expected in manifest.checksums().items():
        path = index_dir / rel
        if not path.is_file():
            problems.append(f"index file {rel} named by the manifest is missing")
        elif sha256_file(path) != expected:
            problems.append(f"index file {rel} does not match its sha256 in the manifest "
                            "(modified or corrupted)")
    with sessions() as session:
        state = catalog_state(session)
        try:
            ids, slots = indexed_slots(session)
        except ChextrievError as error:
            return problems + [str(error)]
        checkpoints = set(session.scalars(
            select(Image.checkpoint_id).where(Image.status == STATUS_INDEXED).distinct()))
        try:
            store = open_store(session, index_dir)
        except StoreError as error:
            problems.append(str(error))
            store = None
    if store is None and len(ids):
        problems.append(f"no vector store in {index_dir}")
    try:
        index = VectorIndex.load(index_dir, mmap=True, lazy=True,
                                 exact=StoreExact(store, ids, slots) if store else None)
    except IndexStateError as error:
        return problems + [str(error)]
    if manifest.catalog_generation != state.generation:
        problems.append(f"the index reflects catalog generation {manifest.catalog_generation}, "
                        f"the catalog is at {state.generation} (run `chextriev index` or "
                        "`chextriev index repair`)")
    foreign = {c for c in checkpoints if c != manifest.checkpoint_id}
    if foreign:
        problems.append(f"database rows embedded with checkpoint(s) {sorted(foreign)}, "
                        f"index built for {manifest.checkpoint_id}")
    payload_parts = []
    for segment in index.segments:
        try:
            inside = index.payload_ids(segment)
            listed = segment.ids
        except (IndexStateError, RuntimeError) as error:
            problems.append(str(error))
            continue
        if len(inside) != segment.n or not np.array_equal(inside, listed):
            problems.append(f"segment {segment.name}: the ids inside the Faiss structure differ "
                            f"from its ids file ({len(inside)} vs {len(listed)} ids)")
        payload_parts.append(inside)
    payload = np.sort(np.concatenate(payload_parts)) if payload_parts else np.zeros(0, np.int64)
    dupes = len(payload) - len(np.unique(payload))
    if dupes:
        problems.append(f"the index holds {dupes} duplicate id(s)")
    if manifest.n_vectors != len(payload):
        problems.append(f"manifest says {manifest.n_vectors} vectors, the index holds "
                        f"{len(payload)}")
    missing = np.setdiff1d(ids, payload)
    extra = np.setdiff1d(payload, ids)
    if len(missing):
        problems.append(f"{len(missing)} indexed image(s) missing from the index: "
                        f"{missing[:10].tolist()}")
    if len(extra):
        problems.append(f"{len(extra)} id(s) in the index not indexed in the database: "
                        f"{extra[:10].tolist()}")
    common = np.intersect1d(ids, payload)
    if store is not None and len(common):
        pick = common
        if sample is not None and sample < len(common):
            pick = np.sort(np.random.default_rng(seed).choice(common, sample, replace=False))
        try:
            pos = np.searchsorted(ids, pick)
            exact = normalise(read_vectors(store, pick, slots[pos]))
        except StoreError as error:
            problems.append(str(error))
        else:
            bad = _payload_mismatch(index, pick, exact)
            if len(bad):
                problems.append(f"{len(bad)} of {len(pick)} vector(s) inside the index differ "
                                f"from the catalog's embeddings: {bad[:10].tolist()}")
        # The previews share the store's slots: entries name their images, CRCs hold.
        problems += PreviewStore(index_dir, state.store_rows).verify(
            dict(zip(ids.tolist(), slots.tolist())), sample=pick.tolist())
    return problems


def _payload_mismatch(index: VectorIndex, ids: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Ids whose vector inside the index is not the catalog's (cosine < 0.999 for exact
    codes, < 0.9 for PQ codes)."""
    threshold = 0.9 if index.index_type == "ivf-pq" else 0.999
    found = np.full(len(ids), np.nan)
    for segment in index.segments:
        try:
            seg_ids, vectors = index.payload(segment, wanted=ids)
        except (IndexStateError, RuntimeError):
            continue
        if not len(seg_ids):
            continue
        pos = np.searchsorted(ids, seg_ids)
        with np.errstate(invalid="ignore", over="ignore"):
            cos = np.einsum("nd,nd->n", normalise(np.nan_to_num(vectors)), exact[pos])
        found[pos] = cos
    return ids[~(found >= threshold)]


# ---------------------------------------------------------------------- remove
def remove_images(sessions, index_dir: str | Path, ids: Iterable[int | str], *,
                  device: str = "cpu") -> int:
    """Mark ``ids`` (database ids, or dataset image ids as strings) removed and sync the index.

    Returns the number of images removed. Unknown ids raise ChextrievError listing them.
    """
    wanted = list(ids)
    with sessions() as session:
        found: set[int] = set()
        unknown = []
        for item in wanted:
            text = str(item)
            if text.isdigit() and session.get(Image, int(text)) is not None:
                found.add(int(text))
                continue
            pks = session.scalars(select(Image.id).where(Image.image_id == text)).all()
            if pks:
                found.update(pks)
            else:
                unknown.append(text)
        if unknown:
            raise ChextrievError(f"not in the catalog: {', '.join(unknown[:10])}")
        result = session.execute(
            update(Image).where(Image.id.in_(sorted(found)), Image.status == STATUS_INDEXED)
            .values(status=STATUS_REMOVED, reason="removed by `chextriev index remove`"))
        removed = int(result.rowcount)
        if removed:
            bump_generation(session, removals=removed)
        session.commit()
    manifest = Manifest.read(index_dir)
    sync_index(sessions, index_dir, checkpoint_id=manifest.checkpoint_id, dim=manifest.dim,
               index_type=manifest.index_type, device=device, nprobe=manifest.nprobe)
    return removed
