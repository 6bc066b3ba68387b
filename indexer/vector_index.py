"""A segmented Faiss index: DB primary keys as ids, immutable segment files merged by tiers.

The parts: index types, factory strings, training and the GPU policy in
:mod:`indexer.faiss_factory`; segments and their merge policy in :mod:`indexer.segments`; the
manifest (the commit point) and the sweep of old files in :mod:`indexer.manifest`; exact-vector
providers in :mod:`indexer.exact`. :class:`VectorIndex` puts them together: build, add, remove,
search (IVF segments share one trained coarse quantizer, so a query is assigned to its
``nprobe`` lists once and every segment is scanned with ``search_preassigned``), IVF-PQ
re-rank with the exact vectors, save and load.

Saved layout: ``manifest.json`` (the commit point), ``segments/trained-<id>.faiss`` (IVF types:
the empty trained index), ``segments/<name>.faiss`` + ``segments/<name>.ids.npy`` per segment.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import faiss
import numpy as np

from chextriev.errors import UnknownNameError
from chextriev.files import fsync_dir
from indexer import faiss_factory
from indexer.exact import ArrayExact, brute_force, empty_result, pad_result, rerank_exact, unit_rows
from indexer.faiss_factory import DEFAULT_NPROBE, INDEX_TYPES, factory_string, resolve_index_type
from indexer.manifest import SEGMENTS, IndexStateError, Manifest, new_name, sweep
from indexer.segments import (
    MERGE_FACTOR,
    MERGE_MAX_BYTES,
    Segment,
    merge_plan,
    payload_ids,
    read_trained,
    write_segment,
    write_trained,
)
from indexer.segments import merge as merge_group

log = logging.getLogger(__name__)


class VectorIndex:
    """Segments of one Faiss layout + an exact-vector provider. Ids are int64 database keys."""

    #: Restricted searches over at most this many allowed ids are exact brute force.
    BRUTE_FORCE_MAX = 50_000

    def __init__(self, index_type: str, factory: str, dim: int, *, nprobe: int = DEFAULT_NPROBE,
                 rerank: int = 8, device: str = "cpu", trained=None,
                 trained_info: dict | None = None, exact=None,
                 merge_factor: int = MERGE_FACTOR):
        self.index_type = index_type
        self.factory = factory
        self.dim = int(dim)
        self.nprobe = int(nprobe)
        self.rerank = int(rerank)
        self.device = device
        self.trained = trained  # empty trained IVF (IVF types), else None
        self.trained_info = trained_info
        self.exact = exact
        self.merge_factor = int(merge_factor)
        self.merge_max_bytes = MERGE_MAX_BYTES  # a merged segment's vectors at most (segments.py)
        self.segments: list[Segment] = []
        self.manifest: Manifest | None = None
        self._ids_cache: np.ndarray | None = None
        self._gpu: bool | None = None  # searching on GPU copies (decided at the first search)

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, index_type: str, dim: int, *, train_vectors: np.ndarray | None = None,
               expected: int = 0, device: str = "cpu", nprobe: int = DEFAULT_NPROBE, rerank: int = 8,
               factory: str | None = None, exact=None) -> VectorIndex:
        """An empty index of a concrete ``index_type``. IVF types are trained on
        ``train_vectors`` (a sample) with nlist sized for ``expected`` vectors."""
        if index_type not in INDEX_TYPES[1:]:
            raise UnknownNameError("index type", index_type, INDEX_TYPES[1:])
        trained = trained_info = None
        if index_type != "flat":
            sample = unit_rows(train_vectors)
            factory = factory or factory_string(index_type, dim, max(expected, len(sample)),
                                                n_train=len(sample))
            trained = faiss_factory.train(faiss_factory.new_index(factory, dim), sample, device)
            trained_info = {"n_train": len(sample), "trained_for": int(max(expected, len(sample)))}
        else:
            factory = factory or factory_string("flat", dim, 0)
        return cls(index_type, factory, dim, nprobe=nprobe, rerank=rerank, device=device,
                   trained=trained, trained_info=trained_info, exact=exact)

    @classmethod
    def build(cls, ids, vectors, *, index_type: str = "auto", device: str = "cpu",
              nprobe: int = DEFAULT_NPROBE, rerank: int = 8, factory: str | None = None,
              expected: int | None = None) -> VectorIndex:
        """An in-memory index of ``ids`` ``(n,)`` int64 and ``vectors`` ``(n, D)`` (normalised
        here), one segment, exact vectors kept in memory."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = unit_rows(vectors) if len(ids) else np.zeros(
            (0, np.shape(vectors)[1] if np.ndim(vectors) == 2 else 0), np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"ids {ids.shape} and vectors {vectors.shape} do not match")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        n, dim = vectors.shape
        concrete = resolve_index_type(index_type, n)
        if concrete != "flat" and n < 2:
            concrete = "flat"
        self = cls.create(concrete, dim, train_vectors=vectors if concrete != "flat" else None,
                          expected=expected or n, device=device, nprobe=nprobe, rerank=rerank,
                          factory=factory, exact=ArrayExact(ids, vectors))
        if n:
            self.add_segment(ids, vectors)
        return self

    def empty(self):
        """A new empty Faiss index of this layout (a clone of the trained one for IVF types)."""
        if self.trained is not None:
            return faiss.clone_index(self.trained)
        return faiss_factory.new_index(self.factory, self.dim)

    def add_segment(self, ids: np.ndarray, vectors: np.ndarray, *, index=None) -> Segment:
        """A new in-memory segment of ``ids`` (``index``: already filled; else ``vectors``,
        normalised, are added to an empty one)."""
        if index is None:
            index = self.empty()
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                               np.ascontiguousarray(ids, np.int64))
        segment = Segment(new_name(), len(ids), index=index, ids=ids, mmap=False)
        self.segments.append(segment)
        self._ids_cache = None
        return segment

    def add(self, ids, vectors) -> None:
        """Add new ``ids`` ``(n,)`` with ``vectors`` ``(n, D)`` as a new segment (persisted by
        the next :meth:`save`); ids already present raise ValueError."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        vectors = unit_rows(vectors)
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.ids).any():
            raise ValueError("add: some ids are already in the index or repeated")
        self.add_segment(ids, vectors)
        if isinstance(self.exact, ArrayExact):
            self.exact = self.exact.extend(ids, vectors)

    def remove(self, ids) -> int:
        """Remove ``ids``: every segment holding some is replaced by a new one without them.
        Returns how many were present."""
        ids = np.asarray(ids, dtype=np.int64)
        removed = 0
        for i, segment in enumerate(list(self.segments)):
            hit = np.isin(segment.ids, ids)
            if not hit.any():
                continue
            index = segment.in_memory()
            count = int(index.remove_ids(faiss.IDSelectorBatch(np.asarray(segment.ids)[hit])))
            if count != int(hit.sum()):
                raise IndexStateError(f"segment {segment.name}: Faiss removed {count} vectors, "
                                      f"its ids file lists {int(hit.sum())}")
            removed += count
            self.segments[i] = Segment(new_name(), segment.n - count, index=index,
                                       ids=np.asarray(segment.ids)[~hit], mmap=False)
        self.segments = [s for s in self.segments if s.n > 0]
        self._ids_cache = None
        if removed and isinstance(self.exact, ArrayExact):
            self.exact = self.exact.drop(ids)
        return removed

    # ------------------------------------------------------------------ reading
    @property
    def ntotal(self) -> int:
        return int(sum(s.n for s in self.segments))

    @property
    def ids(self) -> np.ndarray:
        """Sorted ids of every segment (from the ids files; the one segment's file, mapped,
        when there is one)."""
        if self._ids_cache is None:
            parts = [s.ids for s in self.segments]
            self._ids_cache = (parts[0] if len(parts) == 1 else
                               np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64))
        return self._ids_cache

    def faiss_ids(self) -> np.ndarray:
        """The ids stored inside the Faiss structures themselves (for verification), sorted."""
        parts = [payload_ids(s) for s in self.segments]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def vectors(self, ids) -> np.ndarray:
        """Exact vectors ``(n, D)`` float32, L2-normalised (NaN rows for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.exact is None:
            raise IndexStateError("this index has no exact-vector source")
        out = np.asarray(self.exact.vectors(ids), dtype=np.float32)
        known = np.isfinite(out).all(axis=1)
        if known.any():
            out[known] = unit_rows(out[known])
        return out

    # ------------------------------------------------------------------ search
    @property
    def nlist(self) -> int | None:
        """Inverted lists of an IVF index (``None`` for flat)."""
        return None if self.trained is None else int(faiss.extract_index_ivf(self.trained).nlist)

    def search(self, queries, k: int, *, allowed_ids=None, nprobe: int | None = None,
               rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product. ``queries`` ``(n, D)``; returns ``(scores, ids)``, each
        ``(n, k)``, best first, id -1 / score -inf where fewer than k exist.

        ``nprobe`` (IVF lists scanned) and ``rerank`` (IVF-PQ: ``rerank`` x k candidates
        re-scored with the exact vectors) default to the build's.

        ``allowed_ids``: restrict to these ids (brute force on the exact vectors when the set
        is small, a Faiss ID selector otherwise).
        """
        queries = unit_rows(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        n = len(queries)
        if k <= 0 or self.ntotal == 0:
            return empty_result(n, max(k, 0))
        selector = None
        if allowed_ids is not None:  # ids not in the index find no vector: never returned
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            if len(allowed) <= self.BRUTE_FORCE_MAX or len(allowed) <= k:
                return brute_force(self.vectors, queries, k, allowed)
            selector = faiss.IDSelectorBatch(allowed)
        nprobe = int(nprobe or self.nprobe)
        if self.trained is not None:
            nprobe = max(1, min(nprobe, faiss.extract_index_ivf(self.trained).nlist))
        fetch = k * int(rerank or self.rerank) if self.index_type == "ivf-pq" else k
        fetch = max(1, min(fetch, self.ntotal))
        with faiss_factory.search_threads(n):
            coarse = _Coarse(self.trained, queries, nprobe)
            found = [self._search_segment(segment, queries, min(fetch, segment.n), nprobe, selector,
                                          coarse) for segment in self.segments]
            scores = np.concatenate([f[0] for f in found], axis=1)
            ids = np.concatenate([f[1] for f in found], axis=1)
            scores = np.where(ids >= 0, scores, -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
            scores = np.take_along_axis(scores, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
            if self.index_type == "ivf-pq":
                scores, ids = rerank_exact(self.vectors, queries, ids)
        return pad_result(scores[:, :k], ids[:, :k], k)

    def gpu_copy(self, segment: Segment):
        """The GPU copy of ``segment`` (made by its first search) when this index searches on
        the GPU (:func:`faiss_factory.gpu_available` for its device), else None. A copy that
        cannot be made is logged once and the CPU is used from then on."""
        if self._gpu is None:
            self._gpu = faiss_factory.gpu_available(self.device)
        if not self._gpu:
            return None
        if segment.gpu is None:
            try:
                segment.gpu = faiss_factory.to_gpu(segment.index)
            except Exception as error:  # noqa: BLE001 - any GPU failure falls back
                log.info("cannot copy the index to the GPU (%s): searching on the CPU", error)
                self._gpu = False
                return None
        return segment.gpu

    def _search_segment(self, segment: Segment, queries, k: int, nprobe: int, selector, coarse):
        """One segment's top ``k``: unfiltered searches on its GPU copy when there is one (an IVF
        copy assigns the queries to ``nprobe`` lists itself, ``SearchParametersIVF``), the others
        on the CPU index (IVF: the lists the queries were assigned to once, ``coarse``)."""
        n = len(queries)
        if k <= 0:
            return empty_result(n, 1)
        gpu = self.gpu_copy(segment) if selector is None else None
        if gpu is not None:
            try:
                params = faiss.SearchParametersIVF(nprobe=nprobe) if coarse.ivf else None
                return gpu.search(queries, k, params=params)
            except Exception as error:  # noqa: BLE001 - any GPU failure falls back
                log.info("cannot search on the GPU (%s): searching on the CPU", error)
                self._gpu = False
        index = segment.index
        if not coarse.ivf:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            return index.search(queries, k, params=params)
        coarse_scores, coarse_ids = coarse.assign()
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if selector is not None:
            params.sel = selector
        scores = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        faiss.extract_index_ivf(index).search_preassigned_c(
            n, faiss.swig_ptr(queries), k, faiss.swig_ptr(coarse_ids),
            faiss.swig_ptr(coarse_scores), faiss.swig_ptr(scores), faiss.swig_ptr(ids), False,
            params)
        return scores, ids

    # ------------------------------------------------------------------ persistence
    def save(self, index_dir: str | Path, *, checkpoint_id: str | None, merge: bool = True,
             mmap: bool = True, **state) -> Manifest:
        """Write the unsaved segments (and merges), then commit a new manifest.

        ``state``: ``catalog_generation``, ``store_rows``, ``removals``, ``db_state`` and any
        extra keys to record (e.g. ``columns``, ``bundle``). Returns the new manifest.
        """
        index_dir = Path(index_dir)
        (index_dir / SEGMENTS).mkdir(parents=True, exist_ok=True)
        try:
            previous = Manifest.read(index_dir)
        except IndexStateError:
            previous = None
        if self.trained is not None and (self.trained_info or {}).get("name") is None:
            self.trained_info = write_trained(index_dir, self.trained, self.trained_info or {})
        for segment in self.segments:
            if not segment.saved:
                self._write(index_dir, segment, mmap)
        if merge:
            code = faiss.extract_index_ivf(self.trained).code_size if self.trained is not None \
                else 4 * self.dim
            for group in merge_plan(self.segments, self.merge_factor, self.merge_max_bytes // (code + 8)):
                merged = merge_group(group, self.empty, ivf=self.trained is not None)
                self._write(index_dir, merged, mmap)
                names = {s.name for s in group}
                self.segments = [s for s in self.segments if s.name not in names] + [merged]
                self._ids_cache = None
                log.info("merged %d index segments into one of %d vectors", len(group), merged.n)
        fsync_dir(index_dir / SEGMENTS)
        extra = dict(previous.extra) if previous is not None else {}
        extra.update({k: v for k, v in state.items() if k not in Manifest.__dataclass_fields__})
        manifest = Manifest(
            build_id=new_name(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            index_type=self.index_type, factory=self.factory, dim=self.dim,
            n_vectors=self.ntotal, checkpoint_id=checkpoint_id, nprobe=self.nprobe,
            rerank=self.rerank, segments=[s.info() for s in self.segments],
            trained=self.trained_info, extra=extra,
            previous_files=previous.files() if previous is not None else [],
            **{k: v for k, v in state.items() if k in Manifest.__dataclass_fields__})
        manifest.write(index_dir)
        self.manifest = manifest
        sweep(index_dir)
        return manifest

    def _write(self, index_dir: Path, segment: Segment, mmap: bool) -> None:
        """Write a new segment; then drop its in-memory copy (mapped from disk) when IVF."""
        write_segment(index_dir, segment)
        if mmap and self.trained is not None:
            segment._index = None
            segment.mmap = True

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str = "cpu", mmap: bool = True,
             exact=None, lazy: bool = False, manifest: Manifest | None = None) -> VectorIndex:
        """Open the index named by ``index_dir/manifest.json`` (or by ``manifest``, already
        read). ``mmap``: map IVF segments from disk instead of reading them; ``lazy``: open
        segment files only when first used."""
        index_dir = Path(index_dir)
        manifest = manifest or Manifest.read(index_dir)
        trained = read_trained(index_dir, manifest.trained) if manifest.trained else None
        self = cls(manifest.index_type, manifest.factory, manifest.dim, nprobe=manifest.nprobe,
                   rerank=manifest.rerank, device=device, trained=trained,
                   trained_info=manifest.trained, exact=exact)
        for info in manifest.segments:
            self.segments.append(Segment(
                info["name"], info["n"], root=index_dir, sha256=info["sha256"],
                ids_sha256=info["ids_sha256"], mmap=mmap and trained is not None))
        missing = [f for f in manifest.checksums() if not (index_dir / f).is_file()]
        if missing:
            raise IndexStateError(f"index files named by {index_dir / 'manifest.json'} are "
                                  f"missing: {', '.join(missing[:5])}")
        if not lazy:
            for segment in self.segments:
                segment.check()
        self.manifest = manifest
        return self

    def nbytes_on_disk(self, index_dir: str | Path) -> int:
        index_dir = Path(index_dir)
        files = self.manifest.checksums() if self.manifest else []
        return sum((index_dir / f).stat().st_size for f in files if (index_dir / f).exists())


class _Coarse:
    """The IVF lists of the queries (``nprobe`` per query, the shared quantizer's), computed once
    per search and only when a segment is searched on the CPU (a GPU copy assigns itself)."""

    def __init__(self, trained, queries: np.ndarray, nprobe: int):
        self.ivf = trained is not None
        self._trained, self._queries, self._nprobe = trained, queries, nprobe
        self._assign = None

    def assign(self) -> tuple[np.ndarray, np.ndarray]:
        if self._assign is None:
            quantizer = faiss.extract_index_ivf(self._trained).quantizer
            scores, ids = quantizer.search(self._queries, self._nprobe)
            self._assign = (np.ascontiguousarray(scores, np.float32),
                            np.ascontiguousarray(ids, np.int64))
        return self._assign
