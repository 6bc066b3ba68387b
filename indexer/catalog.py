"""The read side of an index, and the one door to it: everything that reads an index (the
server, the CLI, benchmarks, evaluators) goes through :class:`Catalog`.

>>> catalog = Catalog.open("sqlite:///idx/catalog.sqlite", "idx")      # doctest: +SKIP
>>> hits = catalog.search(query_vectors, k=10, exclude_patients=["p1"])  # doctest: +SKIP
>>> catalog.images([h.image_id for h in hits[0]])                       # doctest: +SKIP

Ids are the database primary keys (``images.id``), also the Faiss ids. ``Hit.image_id`` is that
integer; the dataset's own image identifier (file stem, dicom id, SOPInstanceUID) is the
``"image_id"`` key of :meth:`Catalog.images`.

Filters (``search(..., filters={...})``), all optional and combined with AND: ``view``
(``"PA"``/``"AP"`` or a list; unknown views never match), ``sex`` (``"M"``/``"F"``), ``age_min``
/ ``age_max`` (years, inclusive; unknown ages never match), ``finding`` (a name or a list, all
must hold: its known label when the image has labels, else its predicted probability at the
class's threshold, ``Catalog.open(..., finding_thresholds=)``: the server passes the
checkpoint's, chosen on validation; 0.5 for a class without one).

A search with filters is exact over the allowed set when that set is at most 50,000 images
(brute force on the exact vectors), else it runs on the approximate index with an ID selector.
Exclusions (ids, patients) are applied by over-fetching, so a search always returns k hits when
k images remain. Search results are images of the loaded build (the server drops those that
left the indexed set since, by one status query).

Storage: row metadata in SQL (read per request by id); what a search filters on is in the
build's column files beside the index (:mod:`indexer.columns`, memory-mapped: opening reads no
rows, and every worker shares the pages); exact embeddings and region embeddings in the vector
store (memory-mapped, :mod:`indexer.vector_store`); the Faiss segments mapped from disk
(``IO_FLAG_MMAP``). Everything a search reads is one immutable snapshot: :meth:`Catalog.reload`
opens the snapshot of the newest committed build beside the old one and swaps it in with one
assignment, so searches running meanwhile finish on the old one (no error window).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chextriev.errors import ChextrievError
from chextriev.io.pixels import image_mimetype
from indexer import columns as cols
from indexer import db_read, warm
from indexer.bundle import Bundle
from indexer.db import CatalogSchemaError, CatalogUnavailableError, default_db_url
from indexer.engine import make_engine, make_sessionmaker
from indexer.exact import StoreExact, unit_rows
from indexer.manifest import IndexStateError, Manifest, signature
from indexer.preview_store import PreviewStore
from indexer.vector_index import VectorIndex
from indexer.vector_store import StoreError, VectorStore, open_store

log = logging.getLogger(__name__)

#: The errors of the door: what a caller of :class:`Catalog` catches.
__all__ = ["Catalog", "CatalogSchemaError", "CatalogUnavailableError", "Hit", "IndexStateError",
           "UnknownImageError"]

#: the predicted-finding threshold of a class the caller gave none for
DEFAULT_FINDING_THRESHOLD = 0.5


class UnknownImageError(ChextrievError, LookupError):
    """Image ids that are not in the catalog."""

    def __init__(self, ids: Sequence[int]):
        self.ids = list(ids)
        shown = ", ".join(map(str, self.ids[:10])) + (" ..." if len(self.ids) > 10 else "")
        super().__init__(f"{len(self.ids)} image id(s) not in the catalog: {shown}")


@dataclass(frozen=True)
class Hit:
    """One search result: the database primary key and the cosine similarity."""

    image_id: int
    score: float


@dataclass
class _Snapshot:
    """Everything a search reads, from one committed build (replaced whole on reload)."""

    manifest: Manifest
    index: VectorIndex
    store: VectorStore | None
    columns: cols.Columns  # one row per image of the build, sorted by id
    generation: int
    size: int

    @property
    def ids(self) -> np.ndarray:
        return self.columns.ids


class Catalog:
    """SQL metadata + column files + vector store + Faiss index of one archive (read only)."""

    def __init__(self, engine, *, db_url: str, index_dir: Path, device: str = "cpu",
                 finding_thresholds: Mapping[str, float] | None = None, warm: bool = False):
        self.engine, self._warm = engine, warm
        self.finding_thresholds = dict(finding_thresholds or {})
        self.sessions = make_sessionmaker(engine)
        self.db_url = db_url
        self.index_dir = Path(index_dir)
        self.device = device
        self._reload_lock = threading.Lock()
        self._seen = signature(self.index_dir)  # before reading: a race only reloads again
        self._snap = self._load()

    @classmethod
    def open(cls, db_url: str | None, index_dir: str | Path, *, device: str = "cpu",
             finding_thresholds: Mapping[str, float] | None = None, warm: bool = False) -> Catalog:
        """Open the database at ``db_url`` (default ``sqlite:///<index_dir>/catalog.sqlite``)
        and the index saved in ``index_dir``; ``finding_thresholds`` (class name -> threshold)
        decide which predicted findings the ``finding`` filter counts (0.5 for the others);
        ``warm``: each build's files read ahead (a server). Raises ChextrievError when either is
        missing, or the schema is not this code's (:class:`CatalogSchemaError`)."""
        index_dir = Path(index_dir)
        db_url = db_url or default_db_url(index_dir)
        engine = make_engine(db_url, create=False)
        try:
            return cls(engine, db_url=db_url, index_dir=index_dir, device=device,
                       finding_thresholds=finding_thresholds, warm=warm)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def _load(self) -> _Snapshot:
        """Open the newest committed build: the manifest, the index segments and the column
        files mapped (no catalog rows read), the vector store at its committed length."""
        manifest = Manifest.read(self.index_dir)
        index = VectorIndex.load(self.index_dir, device=self.device, mmap=True, manifest=manifest)
        def rows(session):
            generation, _ = db_read.generation(session)
            store = open_store(session, self.index_dir)
            if manifest.columns is not None:
                columns = cols.Columns.open(self.index_dir, manifest.columns)
                return generation, store, columns, len(columns)
            log.warning("the index build %s has no search column files (made before them): "
                        "reading every indexed row of the catalog instead (slow at scale); the "
                        "next `chextriev index` run or `chextriev index repair` writes them",
                        manifest.build_id)
            names = db_read.first_class_names(session)
            columns = cols.from_rows(db_read.column_rows(session.connection(), names), names)
            return generation, store, columns, int(np.isin(index.ids, columns.ids).sum())

        generation, store, columns, size = self._read(rows)
        if store is not None:
            index.exact = StoreExact(store, columns.ids, columns.slots)
        if self._warm:  # the build's mapped files, ahead of the first searches (indexer/warm.py)
            warm.start_build(self.index_dir, manifest, store)
        if manifest.catalog_generation != generation:
            log.info("index build %s reflects catalog generation %d, the catalog is at %d "
                     "(indexing in progress, or run `chextriev index verify`)",
                     manifest.build_id, manifest.catalog_generation, generation)
        return _Snapshot(manifest=manifest, index=index, store=store, columns=columns,
                         generation=generation, size=size)

    def _read(self, fn, *args):
        """``fn(session, *args)`` through :func:`indexer.db_read.run`: a restarted database's
        dropped connection made again, an unreachable one :class:`CatalogUnavailableError`."""
        return db_read.run(self.sessions, fn, *args)

    def ping(self) -> None:
        """One round trip to the catalog database; raises :class:`CatalogUnavailableError`
        naming it when it cannot be reached (the server's ``/readyz``)."""
        self._read(db_read.ping)

    def changed(self) -> bool:
        """Whether a build other than the one loaded is committed now (one ``stat`` of the
        manifest, which every save renames into place): call :meth:`reload` when True."""
        return signature(self.index_dir) != self._seen

    def reload(self) -> bool:
        """Open the newest committed build when it is not the one in use; True when swapped.

        The new snapshot is opened beside the old one (mapping the build's files: what a reload
        costs does not grow with the archive) and swapped in with one assignment, so concurrent
        searches never see a half-loaded state. On failure the old snapshot stays in use and the
        error is raised (retry later). One reload at a time per catalog."""
        with self._reload_lock:
            seen = signature(self.index_dir)
            manifest = Manifest.read(self.index_dir)
            if manifest.build_id == self._snap.manifest.build_id:
                self._seen = seen
                return False
            try:
                snap = self._load()
            except (IndexStateError, StoreError, OSError, ValueError):
                snap = self._load()  # the build moved on while we read it: once more
            self._snap, self._seen = snap, seen
            return True

    @property
    def index(self) -> VectorIndex:
        return self._snap.index

    @property
    def manifest(self) -> Manifest:
        return self._snap.manifest

    @property
    def size(self) -> int:
        """Number of searchable images (the images of the loaded build)."""
        return self._snap.size

    @property
    def build_id(self) -> str:
        return self._snap.manifest.build_id

    @property
    def bundle(self) -> Bundle:
        """What the loaded build records about how it was made (:mod:`indexer.bundle`)."""
        return Bundle.from_manifest(self.index_dir, self._snap.manifest)

    @property
    def checkpoint_id(self) -> str | None:
        return self._snap.manifest.checkpoint_id

    @property
    def embedding_dim(self) -> int:
        return self._snap.index.dim

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._snap.columns.class_names

    def status(self, ids: Iterable[int]) -> dict[int, str]:
        """``{id: status}`` (``indexed`` / ``skipped`` / ``failed`` / ``removed``) of the known
        ids; unknown ids are absent. One indexed query: cheap per request."""
        return self._read(db_read.image_status, ids)

    def search(self, vectors, k: int, *, exclude_ids: Iterable[int] | None = None,
               exclude_patients: Iterable[str | int] | None = None,
               filters: dict[str, Any] | None = None, nprobe: int | None = None,
               rerank: int | None = None) -> list[list[Hit]]:
        """The ``k`` most similar images of the loaded build for each query vector.

        ``vectors`` ``(n, D)`` (L2-normalised here); ``exclude_ids`` database ids to leave out;
        ``exclude_patients`` patient keys as :meth:`images` reports them (``"patient"``) or
        patient primary keys; ``filters`` see the module docstring; ``nprobe`` IVF lists to
        scan and ``rerank`` the IVF-PQ re-rank depth (``rerank`` x k candidates re-scored with
        the exact vectors), both defaulting to the build's (:meth:`search_settings`). Returns
        one list of at most ``k`` :class:`Hit` per query, best first.
        """
        snap = self._snap
        columns = snap.columns
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != snap.index.dim:
            raise ChextrievError(
                f"query vectors have dimension {vectors.shape[1]} but the index holds "
                f"{snap.index.dim}-d vectors (checkpoint {self.checkpoint_id})")
        excluded = np.zeros(len(columns), dtype=bool)
        if exclude_ids is not None:
            excluded[columns.rows_of(np.fromiter((int(i) for i in exclude_ids), np.int64))] = True
        if exclude_patients:
            excluded[columns.rows_of_patients(self._patient_pks(exclude_patients))] = True
        allowed_ids = None
        if filters:
            mask = columns.mask(filters, self.finding_thresholds, DEFAULT_FINDING_THRESHOLD)
            allowed_ids = np.asarray(columns.ids[mask & ~excluded])
            fetch = k
        else:
            fetch = k + int(excluded.sum())
        # Over-fetch a little so that stale index entries (not in the build's columns) can go.
        fetch = min(fetch + 8, max(snap.index.ntotal, 1))
        scores, ids = snap.index.search(vectors, fetch, allowed_ids=allowed_ids, nprobe=nprobe,
                                        rerank=rerank)
        results: list[list[Hit]] = []
        known = columns.ids
        for row_scores, row_ids in zip(scores, ids):
            keep = row_ids >= 0
            if len(known):
                pos = np.clip(np.searchsorted(known, row_ids), 0, len(known) - 1)
                keep &= (known[pos] == row_ids) & ~excluded[pos]
            else:
                keep &= False
            results.append([Hit(int(i), float(s))
                            for i, s in zip(row_ids[keep][:k], row_scores[keep][:k])])
        return results

    def _patient_pks(self, patients: Iterable[str | int]) -> np.ndarray:
        """Primary keys of ``patients`` (ints as they are; strings looked up by stored key)."""
        pks = [int(p) for p in patients if isinstance(p, (int, np.integer))]
        keys = [str(p) for p in patients if not isinstance(p, (int, np.integer))]
        if keys:
            pks += self._read(db_read.patient_pks, keys)
        return np.unique(np.asarray(pks, np.int64))

    def search_settings(self, nprobe: int | None = None, rerank: int | None = None
                        ) -> dict[str, Any]:
        """What a search with these per-search settings uses (the build's where ``None``):
        ``index_type``, ``nprobe`` (capped at ``nlist``; ``None`` for flat indexes), ``nlist``
        (IVF lists, ``None`` for flat), ``rerank`` (``None`` unless IVF-PQ)."""
        index = self._snap.index
        nlist = index.nlist
        return {"index_type": index.index_type,
                "nprobe": None if nlist is None else min(int(nprobe or index.nprobe), nlist),
                "nlist": nlist,
                "rerank": int(rerank or index.rerank) if index.index_type == "ivf-pq" else None}

    def lookup(self, image_id: str) -> int | None:
        """The database id of an indexed image by its dataset image id (or source path)."""
        return self._read(db_read.lookup, image_id)

    def lookup_instance(self, sop_instance_uid: str, *,
                        pseudonym_key: bytes | None = None) -> int | None:
        """The database id of an indexed image by its DICOM SOP Instance UID, or ``None``.

        The UID as stored; in a pseudonymised catalog (``chextriev index --pseudonymise``) the
        stored UID is its keyed pseudonym (:func:`chextriev.io.deid.uid_pseudonym`), found
        when ``pseudonym_key`` (the indexer's key) is given. One indexed (unique) lookup each."""
        return self._read(db_read.lookup_instance, sop_instance_uid, pseudonym_key)

    def images(self, ids: Sequence[int]) -> list[dict]:
        """Metadata of ``ids`` in the given order; raises UnknownImageError for unknown ids.

        Keys: ``id``, ``image_id``, ``patient`` (stored key, pseudonymised when indexed with
        ``--pseudonymise``), ``study``, ``view``, ``sex``, ``age``, ``study_date``,
        ``known_findings`` ({finding: 0/1} or None), ``probabilities`` ({finding: p}),
        ``region_probabilities`` ((18, C) nested lists), ``boxes`` ((18, 4) nested lists, None
        rows missing), ``box_source``, ``source_path``, ``width``, ``height``, ``status``,
        ``format``, ``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``
        (keyed HMACs when pseudonymised), ``pseudonymised``.
        """
        ids = [int(i) for i in ids]
        by_id = self._read(db_read.image_rows, ids)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise UnknownImageError(missing)
        return [by_id[i] for i in ids]

    def thumbnail_bytes(self, image_id: int) -> tuple[bytes, str]:
        """The stored thumbnail as it is stored (the decoding worker's JPEG,
        :func:`chextriev.io.pixels.encode_thumbnail`; PNG in older catalogs) and its MIME type."""
        data = self._read(db_read.thumbnail, image_id)
        if data is None:
            raise UnknownImageError([image_id])
        return data, image_mimetype(data)

    def preview_bytes(self, image_id: int) -> tuple[bytes, str] | None:
        """The stored preview (grey JPEG, about ``--preview-side`` px) of one image and its MIME
        type, or None when the index stores none for it (built before previews, or with
        ``--preview-side 0``, or damaged: then the caller shows the thumbnail)."""
        slot, committed = self._read(lambda session: (
            db_read.vector_slots(session, [image_id]).get(int(image_id)),
            db_read.store_rows(session)))
        data = PreviewStore(self.index_dir, committed).get(slot, int(image_id))
        return None if data is None else (data, "image/jpeg")

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Exact embeddings ``(n, D)`` float32, L2-normalised, of ``ids`` (indexed or not, as
        long as they have one)."""
        snap = self._snap
        ids = np.asarray([int(i) for i in ids], dtype=np.int64)
        out = snap.index.vectors(ids) if snap.index.exact is not None else np.full(
            (len(ids), snap.index.dim), np.nan, np.float32)
        missing = ~np.isfinite(out).all(axis=1)
        if missing.any():
            slots = self._read(db_read.vector_slots, ids[missing].tolist())
            absent = [int(i) for i in ids[missing] if slots.get(int(i)) is None]
            if absent or snap.store is None:
                raise UnknownImageError(absent or ids[missing].tolist())
            rows = np.array([slots[int(i)] for i in ids[missing]], np.int64)
            out[missing] = unit_rows(self._store_for(rows).embeddings(rows))
        return out

    def region_embeddings(self, ids: Sequence[int]) -> np.ndarray | None:
        """Per-region embeddings ``(n, 18, R)`` float32, or None when the model has none."""
        slots = self._snap.columns.slot_map(ids := [int(i) for i in ids])  # the build's: mapped
        if rest := [i for i in ids if i not in slots]:  # indexed since the build loaded, unknown
            slots.update(self._read(db_read.vector_slots, rest))
        missing = [i for i in ids if i not in slots]
        if missing:
            raise UnknownImageError(missing)
        store = self._snap.store
        if not ids or store is None or not store.region_dim or any(slots[i] is None for i in ids):
            return None
        rows = np.array([slots[i] for i in ids], np.int64)
        return self._store_for(rows).regions(rows)

    def _store_for(self, slots: np.ndarray) -> VectorStore:
        """The snapshot's vector store, or, for slots committed after it was opened (images
        indexed since the last reload), the store at the database's committed length now."""
        store = self._snap.store
        if store is not None and (not len(slots) or int(np.max(slots)) < store.committed):
            return store
        fresh = self._read(open_store, self.index_dir)
        if fresh is None:
            raise UnknownImageError([])
        return fresh
