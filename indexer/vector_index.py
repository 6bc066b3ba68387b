"""A segmented Faiss index: DB primary keys as ids, immutable segment files, merged by tiers.

Index types (all inner product on L2-normalised vectors, i.e. cosine similarity):

* ``flat``      ``IDMap2,Flat``: exact search.
* ``ivf-flat``  ``IVF{nlist},Flat``: inverted lists of exact vectors; ``nprobe`` lists searched.
* ``ivf-pq``    ``IVF{nlist},PQ{m}x{nbits}``: compressed codes; the ``rerank`` x k best are
                re-scored with the exact vectors.
* ``auto``      ``flat`` below :data:`AUTO_FLAT_MAX` vectors, ``ivf-flat`` below
                :data:`AUTO_IVF_FLAT_MAX`, ``ivf-pq`` above.

**Segments.** An index is a list of segments, each a complete Faiss index over a disjoint set of
ids, written once with ``faiss.write_index`` to its own file and never modified. IVF segments
share one trained coarse quantizer (``trained-*.faiss``, trained once on a sample, sized for the
expected final count), so a query is assigned to its ``nprobe`` lists once and every segment is
scanned with ``search_preassigned``. New vectors become a new (small) segment: a save writes only
what was added. Segments of a similar size are merged when :data:`MERGE_FACTOR` of them exist
(``IndexIVF.merge_from`` concatenates inverted lists, no re-assignment), so a vector is rewritten
about log_F(n / first segment size) times over a whole run, and a query scans at most
``(F - 1)`` segments per size tier.

**Exact vectors** come from an ``exact`` provider (``vectors(ids) -> (n, D)``, NaN rows for
unknown ids): the catalog's vector store (:mod:`indexer.vector_store`) on disk, or an in-memory
array for :meth:`VectorIndex.build`. They serve the IVF-PQ re-rank, brute-force searches over
small allowed sets (so filters never starve the top k) and :meth:`VectorIndex.vectors`.

Saved layout (the manifest is the commit point: written to a temporary name, fsynced, renamed)::

    index_dir/manifest.json                 segments, sha256 of every file, build parameters,
                                            the catalog state it reflects
    index_dir/segments/trained-<id>.faiss   IVF types: the empty trained index
    index_dir/segments/<name>.faiss         one segment (faiss.write_index to the file)
    index_dir/segments/<name>.ids.npy       its ids, sorted int64

Files named by the new manifest or by the previous one are never deleted (a reader that has
just read the previous manifest can still open its files); anything else is swept by a save.
Readers map IVF segments from disk (``faiss.IO_FLAG_MMAP``).

GPU: when Faiss has GPUs (``faiss.get_num_gpus() > 0``) and ``device`` is ``cuda`` or ``auto``,
IVF k-means runs on the GPU and unfiltered segment searches use GPU copies; the CPU segments are
always the saved masters. Otherwise one log line says why and the CPU is used.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from chextriev.errors import ChextrievError, UnknownNameError
from chextriev.files import atomic_open, atomic_path, atomic_write, fsync_dir, sha256_file

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq")
AUTO_FLAT_MAX = 50_000
AUTO_IVF_FLAT_MAX = 2_000_000
MANIFEST = "manifest.json"
SEGMENTS = "segments"
FORMAT = 2
#: Segments of one size tier merged together once this many exist.
MERGE_FACTOR = 10
#: Segments below this many vectors are tier 0; tier t holds sizes [B F^(t-1), B F^t).
TIER_BASE = 1_024


class IndexStateError(ChextrievError):
    """An index folder that is missing, corrupt or does not match its manifest."""


def resolve_index_type(index_type: str, n: int) -> str:
    """The concrete type for ``index_type`` (``auto`` picks by ``n``)."""
    if index_type not in INDEX_TYPES:
        raise UnknownNameError("index type", index_type, INDEX_TYPES)
    if index_type != "auto":
        return index_type
    if n < AUTO_FLAT_MAX:
        return "flat"
    return "ivf-flat" if n < AUTO_IVF_FLAT_MAX else "ivf-pq"


def default_nlist(n: int) -> int:
    """About sqrt(n) lists (1,000 at 1M: k-means training stays cheap on a CPU), at least 39
    training points per list, at least 1."""
    return int(max(1, min(round(math.sqrt(max(n, 1))), n // 39)))


def _pq_params(dim: int, n: int) -> tuple[int, int]:
    """(m, nbits): 16 dimensions per sub-quantizer (4 below 256 dimensions); fewer bits on tiny
    training sets."""
    m = max(1, dim // 16 if dim >= 256 else dim // 4)
    while dim % m:
        m -= 1
    nbits = 8 if n >= 39 * 256 else max(4, int(math.log2(max(16, n // 39))))
    return m, min(nbits, 8)


def factory_string(index_type: str, dim: int, n: int, *, n_train: int | None = None) -> str:
    """The Faiss factory string of a concrete ``index_type`` for ``n`` vectors of ``dim``
    (``n_train``: vectors available for training, limits nlist; default ``n``)."""
    if index_type == "flat":
        return "IDMap2,Flat"
    n_train = n if n_train is None else n_train
    nlist = max(1, min(default_nlist(n), n_train // 39 or 1))
    if index_type == "ivf-flat":
        return f"IVF{nlist},Flat"
    if index_type == "ivf-pq":
        m, nbits = _pq_params(dim, n_train)
        return f"IVF{nlist},PQ{m}x{nbits}"
    raise UnknownNameError("index type", index_type, INDEX_TYPES[1:])


def gpu_available(device: str) -> bool:
    """True when ``device`` allows a GPU and this Faiss build sees one; logs once when not."""
    if device == "cpu":
        return False
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus > 0:
        return True
    if device == "cuda":
        log.info("Faiss has no GPU support here (faiss-cpu or no device): building on the CPU")
    return False


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, float32, C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def write_faiss(index, path: Path) -> None:
    """``faiss.write_index`` straight to a file (temporary name, fsync, rename)."""
    atomic_path(path, lambda tmp: faiss.write_index(index, str(tmp)))


def write_npy(array: np.ndarray, path: Path) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array)


# ---------------------------------------------------------------------- exact vectors
class ArrayExact:
    """In-memory exact vectors: sorted ``ids`` ``(n,)`` and their ``vectors`` ``(n, D)``."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, np.int64)[order]
        self.matrix = normalise(vectors)[order] if len(ids) else np.zeros(
            (0, vectors.shape[1] if np.ndim(vectors) == 2 else 0), np.float32)

    def vectors(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.full((len(ids), self.matrix.shape[1]), np.nan, np.float32)
        if len(self.ids) and len(ids):
            pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
            ok = self.ids[pos] == ids
            out[ok] = self.matrix[pos[ok]]
        return out

    def extend(self, ids, vectors) -> ArrayExact:
        return ArrayExact(np.concatenate([self.ids, np.asarray(ids, np.int64)]),
                          np.concatenate([self.matrix, normalise(vectors)]))

    def drop(self, ids) -> ArrayExact:
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        return ArrayExact(self.ids[keep], self.matrix[keep])


# ---------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What a saved index is: its segments (with checksums), build parameters, and the catalog
    state it reflects. Unknown keys read from a manifest are kept in ``extra`` and written back,
    so later code can record more (checkpoint, detector, model config) without a new format."""

    build_id: str
    created: str
    index_type: str
    factory: str
    dim: int
    n_vectors: int
    checkpoint_id: str | None
    nprobe: int
    rerank: int
    segments: list[dict] = field(default_factory=list)  # name, n, tier, sha256, ids_sha256
    trained: dict | None = None  # name, sha256, n_train, trained_for
    catalog_generation: int = 0
    store_rows: int = 0
    removals: int = 0
    db_state: str = ""
    previous_files: list[str] = field(default_factory=list)
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def build_dir(self) -> str:
        return SEGMENTS

    def files(self) -> list[str]:
        """Every file this manifest names, relative to the index folder."""
        out = []
        if self.trained:
            out.append(f"{SEGMENTS}/{self.trained['name']}.faiss")
        for seg in self.segments:
            out += [f"{SEGMENTS}/{seg['name']}.faiss", f"{SEGMENTS}/{seg['name']}.ids.npy"]
        return out

    def checksums(self) -> dict[str, str]:
        out = {}
        if self.trained:
            out[f"{SEGMENTS}/{self.trained['name']}.faiss"] = self.trained["sha256"]
        for seg in self.segments:
            out[f"{SEGMENTS}/{seg['name']}.faiss"] = seg["sha256"]
            out[f"{SEGMENTS}/{seg['name']}.ids.npy"] = seg["ids_sha256"]
        return out

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def read(cls, index_dir: str | Path) -> Manifest:
        path = Path(index_dir) / MANIFEST
        if not path.is_file():
            raise IndexStateError(f"no index in {index_dir}: {MANIFEST} is missing "
                                  "(run `chextriev index`)")
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise IndexStateError(f"{path} is not a valid index manifest: {error}") from error
        if not isinstance(data, dict):
            raise IndexStateError(f"{path} is not a valid index manifest")
        if data.get("format", 1) != FORMAT:
            raise IndexStateError(
                f"{path} is an index of format {data.get('format', 1)} (this chextriev reads "
                f"{FORMAT}): run `chextriev index repair --index-dir {index_dir}` to rebuild it "
                "from the catalog")
        known = set(cls.__dataclass_fields__) - {"extra"}
        try:
            manifest = cls(**{k: data[k] for k in known if k in data})
        except TypeError as error:
            raise IndexStateError(f"{path} is not a valid index manifest: {error}") from error
        manifest.extra = {k: v for k, v in data.items() if k not in known}
        return manifest

    def write(self, index_dir: Path) -> None:
        atomic_write(Path(index_dir) / MANIFEST, self.to_json(), dir_sync=True)


# ---------------------------------------------------------------------- segments
def tier_of(n: int, factor: int = MERGE_FACTOR, base: int = TIER_BASE) -> int:
    if n < base:
        return 0
    return 1 + math.floor(math.log(n / base, factor) + 1e-9)


class Segment:
    """One immutable Faiss index over a disjoint set of ids (loaded lazily)."""

    def __init__(self, name: str, n: int, *, root: Path | None = None, index=None,
                 ids: np.ndarray | None = None, sha256: str | None = None,
                 ids_sha256: str | None = None, mmap: bool = True):
        self.name = name
        self.n = int(n)
        self.root = root
        self._index = index
        self._ids = None if ids is None else np.sort(np.asarray(ids, np.int64))
        self.sha256 = sha256
        self.ids_sha256 = ids_sha256
        self.mmap = mmap
        self.gpu = None

    @property
    def saved(self) -> bool:
        return self.sha256 is not None

    def path(self, suffix: str = ".faiss") -> Path:
        return Path(self.root) / SEGMENTS / f"{self.name}{suffix}"

    @property
    def index(self):
        if self._index is None:
            try:
                flags = faiss.IO_FLAG_MMAP if self.mmap else 0
                self._index = faiss.read_index(str(self.path()), flags)
            except RuntimeError as error:
                raise IndexStateError(f"index segment {self.path()} is unreadable: "
                                      f"{str(error).strip().splitlines()[-1]}") from error
        return self._index

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            try:
                self._ids = np.load(self.path(".ids.npy"))
            except (OSError, ValueError) as error:
                raise IndexStateError(f"ids of index segment {self.name} are unreadable: "
                                      f"{error}") from error
        return self._ids

    def in_memory(self):
        """The segment's index fully in memory (a copy when it is mapped from disk)."""
        if self._index is not None and not self.mmap:
            return self._index
        return faiss.read_index(str(self.path()))

    def info(self) -> dict:
        return {"name": self.name, "n": self.n, "tier": tier_of(self.n), "sha256": self.sha256,
                "ids_sha256": self.ids_sha256}


def new_segment_name() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)


# ---------------------------------------------------------------------- the index
class VectorIndex:
    """Segments of one Faiss layout + an exact-vector provider. Ids are int64 database keys."""

    #: Restricted searches over at most this many allowed ids are exact brute force.
    BRUTE_FORCE_MAX = 50_000

    def __init__(self, index_type: str, factory: str, dim: int, *, nprobe: int = 32,
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
        self.segments: list[Segment] = []
        self.manifest: Manifest | None = None
        self._ids_cache: np.ndarray | None = None
        self._gpu_failed = False

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, index_type: str, dim: int, *, train_vectors: np.ndarray | None = None,
               expected: int = 0, device: str = "cpu", nprobe: int = 32, rerank: int = 8,
               factory: str | None = None, exact=None) -> VectorIndex:
        """An empty index of a concrete ``index_type``. IVF types are trained on
        ``train_vectors`` (a sample) with nlist sized for ``expected`` vectors."""
        if index_type not in INDEX_TYPES[1:]:
            raise UnknownNameError("index type", index_type, INDEX_TYPES[1:])
        trained = trained_info = None
        if index_type != "flat":
            sample = normalise(train_vectors)
            factory = factory or factory_string(index_type, dim, max(expected, len(sample)),
                                                n_train=len(sample))
            trained = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            trained = cls._train(trained, sample, device)
            trained_info = {"n_train": len(sample), "trained_for": int(max(expected, len(sample)))}
        else:
            factory = factory or factory_string("flat", dim, 0)
        return cls(index_type, factory, dim, nprobe=nprobe, rerank=rerank, device=device,
                   trained=trained, trained_info=trained_info, exact=exact)

    @classmethod
    def build(cls, ids, vectors, *, index_type: str = "auto", device: str = "cpu",
              nprobe: int = 32, rerank: int = 8, factory: str | None = None,
              expected: int | None = None) -> VectorIndex:
        """An in-memory index of ``ids`` ``(n,)`` int64 and ``vectors`` ``(n, D)`` (normalised
        here), one segment, exact vectors kept in memory."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = normalise(vectors) if len(ids) else np.zeros(
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
            self._add_segment(ids, vectors)
        return self

    @staticmethod
    def _train(index, vectors: np.ndarray, device: str):
        sample = vectors
        ivf = faiss.extract_index_ivf(index)
        concrete = faiss.downcast_index(ivf)
        if isinstance(concrete, faiss.IndexIVFPQ):
            concrete.do_polysemous_training = False  # Hamming filtering is unused, and slow
        limit = max(64 * ivf.nlist, 65_536)  # k-means needs ~39-256 points per centroid
        if len(vectors) > limit:
            pick = np.random.default_rng(0).choice(len(vectors), limit, replace=False)
            sample = vectors[np.sort(pick)]
        if gpu_available(device):
            try:
                clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
                ivf.clustering_index = clustering_index
                index.train(sample)
                ivf.clustering_index = None
                return index
            except Exception as error:  # noqa: BLE001 - any GPU failure falls back
                log.info("GPU training failed (%s): training on the CPU", error)
        index.train(sample)
        return index

    def _empty(self):
        if self.trained is not None:
            return faiss.clone_index(self.trained)
        return faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)

    def _add_segment(self, ids: np.ndarray, vectors: np.ndarray) -> Segment:
        index = self._empty()
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                           np.ascontiguousarray(ids, np.int64))
        segment = Segment(new_segment_name(), len(ids), index=index, ids=ids, mmap=False)
        self.segments.append(segment)
        self._ids_cache = None
        return segment

    def add(self, ids, vectors) -> None:
        """Add new ``ids`` ``(n,)`` with ``vectors`` ``(n, D)`` as a new segment (persisted by
        the next :meth:`save`); ids already present raise ValueError."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        vectors = normalise(vectors)
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.ids).any():
            raise ValueError("add: some ids are already in the index or repeated")
        self._add_segment(ids, vectors)
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
            count = int(index.remove_ids(faiss.IDSelectorBatch(segment.ids[hit])))
            if count != int(hit.sum()):
                raise IndexStateError(f"segment {segment.name}: Faiss removed {count} vectors, "
                                      f"its ids file lists {int(hit.sum())}")
            removed += count
            self.segments[i] = Segment(new_segment_name(), segment.n - count, index=index,
                                       ids=segment.ids[~hit], mmap=False)
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
        """Sorted ids of every segment (from the ids files)."""
        if self._ids_cache is None:
            parts = [s.ids for s in self.segments]
            self._ids_cache = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return self._ids_cache

    def payload(self, segment: Segment, wanted: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` stored INSIDE one segment's Faiss structure (the payload, not the
        ids file), restricted to ``wanted`` ids when given. Used by ``verify``."""
        index = segment.index
        if isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) or hasattr(index, "id_map"):
            mapped = faiss.downcast_index(index)
            ids = faiss.vector_to_array(mapped.id_map).astype(np.int64)
            rows = np.arange(len(ids)) if wanted is None else np.flatnonzero(np.isin(ids, wanted))
            flat = faiss.downcast_index(mapped.index)
            codes = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d) if flat.ntotal else \
                np.zeros(0, np.float32)
            vectors = np.asarray(codes).reshape(-1, flat.d)[rows].astype(np.float32)
            return ids[rows], vectors
        ivf = faiss.extract_index_ivf(index)
        concrete = faiss.downcast_index(ivf)
        lists = ivf.invlists
        out_ids, out_vectors = [], []
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy().astype(np.int64)
            rows = np.arange(size) if wanted is None else np.flatnonzero(np.isin(ids, wanted))
            if not len(rows):
                continue
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * ivf.code_size).copy()
            codes = codes.reshape(size, ivf.code_size)[rows]
            if isinstance(concrete, faiss.IndexIVFFlat):
                vectors = codes.view(np.float32).reshape(len(rows), ivf.d)
            else:
                vectors = np.stack([concrete.reconstruct_from_offset(list_no, int(r))
                                    for r in rows]).astype(np.float32)
            out_ids.append(ids[rows])
            out_vectors.append(vectors)
        if not out_ids:
            return np.zeros(0, np.int64), np.zeros((0, ivf.d), np.float32)
        return np.concatenate(out_ids), np.concatenate(out_vectors)

    def payload_ids(self, segment: Segment) -> np.ndarray:
        """Ids inside one segment's Faiss structure, sorted (cheap: no vectors)."""
        index = segment.index
        if hasattr(index, "id_map") or isinstance(faiss.downcast_index(index), faiss.IndexIDMap2):
            return np.sort(faiss.vector_to_array(faiss.downcast_index(index).id_map)
                           .astype(np.int64))
        ivf = faiss.extract_index_ivf(index)
        out = []
        for list_no in range(ivf.nlist):
            size = ivf.invlists.list_size(list_no)
            if size:
                out.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size).copy())
        return np.sort(np.concatenate(out).astype(np.int64)) if out else np.zeros(0, np.int64)

    def faiss_ids(self) -> np.ndarray:
        """The ids stored inside the Faiss structures themselves (for verification), sorted."""
        parts = [self.payload_ids(s) for s in self.segments]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def vectors(self, ids) -> np.ndarray:
        """Exact vectors ``(n, D)`` float32, L2-normalised (NaN rows for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.exact is None:
            raise IndexStateError("this index has no exact-vector source")
        out = np.asarray(self.exact.vectors(ids), dtype=np.float32)
        known = np.isfinite(out).all(axis=1)
        if known.any():
            out[known] = normalise(out[known])
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
        queries = normalise(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        n = len(queries)
        if k <= 0 or self.ntotal == 0:
            return _empty_result(n, max(k, 0))
        selector = None
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            allowed = allowed[np.isin(allowed, self.ids)]
            if len(allowed) <= self.BRUTE_FORCE_MAX or len(allowed) <= k:
                return self._brute_force(queries, k, allowed)
            selector = faiss.IDSelectorBatch(allowed)
        nprobe = int(nprobe or self.nprobe)
        fetch = k * int(rerank or self.rerank) if self.index_type == "ivf-pq" else k
        fetch = max(1, min(fetch, self.ntotal))
        assign = None
        if self.trained is not None:
            quantizer = faiss.extract_index_ivf(self.trained).quantizer
            nprobe = max(1, min(nprobe, faiss.extract_index_ivf(self.trained).nlist))
            coarse_scores, coarse_ids = quantizer.search(queries, nprobe)
            assign = (np.ascontiguousarray(coarse_scores, np.float32),
                      np.ascontiguousarray(coarse_ids, np.int64))
        all_scores, all_ids = [], []
        for segment in self.segments:
            scores, ids = self._search_segment(segment, queries, min(fetch, segment.n), nprobe,
                                               selector, assign)
            all_scores.append(scores)
            all_ids.append(ids)
        scores = np.concatenate(all_scores, axis=1)
        ids = np.concatenate(all_ids, axis=1)
        scores = np.where(ids >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        if self.index_type == "ivf-pq":
            scores, ids = self._rerank(queries, ids)
        return _pad(scores[:, :k], ids[:, :k], k)

    def _search_segment(self, segment: Segment, queries, k: int, nprobe: int, selector, assign):
        n = len(queries)
        if k <= 0:
            return _empty_result(n, 1)
        index = segment.index
        if selector is None and gpu_available(self.device) and not self._gpu_failed:
            try:
                if segment.gpu is None:
                    segment.gpu = faiss.index_cpu_to_all_gpus(index)
                if assign is not None:
                    faiss.GpuParameterSpace().set_index_parameter(segment.gpu, "nprobe", nprobe)
                return segment.gpu.search(queries, k)
            except Exception as error:  # noqa: BLE001 - any GPU failure falls back
                log.info("cannot search on the GPU (%s): searching on the CPU", error)
                self._gpu_failed = True
        if assign is None:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
            return index.search(queries, k, params=params)
        ivf = faiss.extract_index_ivf(index)
        coarse_scores, coarse_ids = assign
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if selector is not None:
            params.sel = selector
        scores = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        ivf.search_preassigned_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(coarse_ids),
                                 faiss.swig_ptr(coarse_scores), faiss.swig_ptr(scores),
                                 faiss.swig_ptr(ids), False, params)
        return scores, ids

    def _rerank(self, queries: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = cand.reshape(-1)
        exact = self.vectors(np.where(flat >= 0, flat, 0)).reshape(*cand.shape, self.dim)
        valid = (cand >= 0) & np.isfinite(exact).all(axis=2)
        exact = np.where(valid[..., None], exact, 0.0)
        scores = np.einsum("nd,nkd->nk", queries, exact)
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.where(np.isfinite(scores), np.take_along_axis(cand, order, axis=1), -1)
        return scores.astype(np.float32), ids

    def _brute_force(self, queries: np.ndarray, k: int, allowed: np.ndarray):
        if not len(allowed):
            return _empty_result(len(queries), k)
        vectors = self.vectors(allowed)
        ok = np.isfinite(vectors).all(axis=1)
        allowed, vectors = allowed[ok], vectors[ok]
        if not len(allowed):
            return _empty_result(len(queries), k)
        scores = queries @ vectors.T
        kk = min(k, len(allowed))
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return _pad(np.take_along_axis(top_scores, order, axis=1), allowed[top], k)

    # ------------------------------------------------------------------ persistence
    def _merge_plan(self) -> list[list[Segment]]:
        """Groups of segments to merge: ``merge_factor`` of one tier, smallest first."""
        plan = []
        by_tier: dict[int, list[Segment]] = {}
        for segment in self.segments:
            by_tier.setdefault(tier_of(segment.n, self.merge_factor), []).append(segment)
        for _tier, group in sorted(by_tier.items()):
            group = sorted(group, key=lambda s: s.n)
            while len(group) >= self.merge_factor:
                plan.append(group[:self.merge_factor])
                group = group[self.merge_factor:]
        return plan

    def _merge(self, group: list[Segment]) -> Segment:
        merged = self._empty()
        if self.trained is None:
            merged = faiss.downcast_index(merged)
        for segment in group:
            source = segment.in_memory()
            if self.trained is None:
                source = faiss.downcast_index(source)
            merged.merge_from(source, 0)
            del source
        ids = np.sort(np.concatenate([s.ids for s in group]))
        if merged.ntotal != len(ids):
            raise IndexStateError(f"merging {len(group)} segments gave {merged.ntotal} vectors, "
                                  f"their ids files list {len(ids)}")
        return Segment(new_segment_name(), len(ids), index=merged, ids=ids, mmap=False)

    def _write_segment(self, index_dir: Path, segment: Segment) -> None:
        segment.root = index_dir
        write_faiss(segment._index, segment.path())
        write_npy(segment.ids, segment.path(".ids.npy"))
        segment.sha256 = sha256_file(segment.path())
        segment.ids_sha256 = sha256_file(segment.path(".ids.npy"))

    def _reopen(self, segment: Segment, mmap: bool) -> None:
        """Drop the in-memory copy of a saved segment; map it from disk when it is IVF."""
        if mmap and self.trained is not None:
            segment._index = None
            segment.mmap = True

    def save(self, index_dir: str | Path, *, checkpoint_id: str | None, merge: bool = True,
             mmap: bool = True, **state) -> Manifest:
        """Write the unsaved segments (and merges), then commit a new manifest.

        ``state``: ``catalog_generation``, ``store_rows``, ``removals``, ``db_state`` and any
        extra keys to record. Returns the new manifest.
        """
        index_dir = Path(index_dir)
        (index_dir / SEGMENTS).mkdir(parents=True, exist_ok=True)
        try:
            previous = Manifest.read(index_dir)
            previous_files = previous.files()
        except IndexStateError:
            previous = None
            previous_files = []
        if self.trained is not None and (self.trained_info or {}).get("name") is None:
            info = dict(self.trained_info or {})
            info["name"] = "trained-" + new_segment_name()
            path = index_dir / SEGMENTS / f"{info['name']}.faiss"
            write_faiss(self.trained, path)
            info["sha256"] = sha256_file(path)
            self.trained_info = info
        for segment in self.segments:
            if not segment.saved:
                self._write_segment(index_dir, segment)
                self._reopen(segment, mmap)
        if merge:
            for group in self._merge_plan():
                merged = self._merge(group)
                self._write_segment(index_dir, merged)
                self._reopen(merged, mmap)
                names = {s.name for s in group}
                self.segments = [s for s in self.segments if s.name not in names] + [merged]
                log.info("merged %d index segments into one of %d vectors", len(group), merged.n)
        fsync_dir(index_dir / SEGMENTS)
        extra = dict(previous.extra) if previous is not None else {}
        extra.update({k: v for k, v in state.items() if k not in Manifest.__dataclass_fields__})
        manifest = Manifest(
            build_id=new_segment_name(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            index_type=self.index_type, factory=self.factory, dim=self.dim,
            n_vectors=self.ntotal, checkpoint_id=checkpoint_id, nprobe=self.nprobe,
            rerank=self.rerank, segments=[s.info() for s in self.segments],
            trained=self.trained_info, previous_files=previous_files, extra=extra,
            **{k: v for k, v in state.items() if k in Manifest.__dataclass_fields__})
        manifest.write(index_dir)
        self.manifest = manifest
        sweep(index_dir)
        return manifest

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str = "cpu", mmap: bool = True,
             exact=None, lazy: bool = False) -> VectorIndex:
        """Open the index named by ``index_dir/manifest.json``. ``mmap``: map IVF segments from
        disk instead of reading them; ``lazy``: open segment files only when first used."""
        index_dir = Path(index_dir)
        manifest = Manifest.read(index_dir)
        trained = None
        if manifest.trained:
            path = index_dir / SEGMENTS / f"{manifest.trained['name']}.faiss"
            try:
                trained = faiss.read_index(str(path))
            except RuntimeError as error:
                raise IndexStateError(f"the trained index {path} is unreadable: "
                                      f"{str(error).strip().splitlines()[-1]}") from error
        self = cls(manifest.index_type, manifest.factory, manifest.dim, nprobe=manifest.nprobe,
                   rerank=manifest.rerank, device=device, trained=trained,
                   trained_info=manifest.trained, exact=exact)
        for info in manifest.segments:
            segment = Segment(info["name"], info["n"], root=index_dir, sha256=info["sha256"],
                              ids_sha256=info["ids_sha256"], mmap=mmap and trained is not None)
            self.segments.append(segment)
        missing = [f for f in manifest.files() if not (index_dir / f).is_file()]
        if missing:
            raise IndexStateError(f"index files named by {index_dir / MANIFEST} are missing: "
                                  f"{', '.join(missing[:5])}")
        if not lazy:
            for segment in self.segments:
                _ = segment.index
                if segment.index.ntotal != segment.n or len(segment.ids) != segment.n:
                    raise IndexStateError(
                        f"index segment {segment.name} is inconsistent: manifest {segment.n} "
                        f"vectors, faiss {segment.index.ntotal}, ids file {len(segment.ids)}")
        self.manifest = manifest
        return self

    def nbytes_on_disk(self, index_dir: str | Path) -> int:
        index_dir = Path(index_dir)
        files = self.manifest.files() if self.manifest else []
        return sum((index_dir / f).stat().st_size for f in files if (index_dir / f).exists())


def sweep(index_dir: str | Path) -> list[str]:
    """Delete index files named neither by the manifest on disk nor by its predecessor
    (``previous_files``), and leftover temporary files; returns what was deleted. Never touches
    what the current manifest names, even when called by another process."""
    index_dir = Path(index_dir)
    try:
        manifest = Manifest.read(index_dir)
    except IndexStateError:
        return []
    keep = set(manifest.files()) | set(manifest.previous_files)
    deleted = []
    folder = index_dir / SEGMENTS
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        rel = f"{SEGMENTS}/{path.name}"
        if rel not in keep:
            path.unlink(missing_ok=True)
            deleted.append(rel)
    legacy = index_dir / "builds"  # format 1 builds: superseded once a format 2 manifest exists
    if legacy.is_dir() and not any(f.startswith("builds/") for f in keep):
        shutil.rmtree(legacy, ignore_errors=True)
        deleted.append("builds/")
    for path in index_dir.glob(f"{MANIFEST}.tmp-*"):
        path.unlink(missing_ok=True)
    return deleted


def _empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(scores)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    kk = min(k, scores.shape[1])
    out_s[:, :kk] = scores[:, :kk]
    out_i[:, :kk] = ids[:, :kk]
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


ExactProvider = Callable[[np.ndarray], np.ndarray]
