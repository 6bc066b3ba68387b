"""Index segments and their merge policy.

A segment is a complete Faiss index over a disjoint set of ids, written once with
``faiss.write_index`` to its own file (with its sorted ids beside it) and never modified::

    index_dir/segments/<name>.faiss      the Faiss structure
    index_dir/segments/<name>.ids.npy    its ids, sorted int64

New vectors become a new (small) segment. Segments of one size tier (tier 0: fewer than
:data:`TIER_BASE` vectors; tier t: ``[B F^(t-1), B F^t)``) are merged once :data:`MERGE_FACTOR`
of them exist (``IndexIVF.merge_from`` concatenates inverted lists, no re-assignment), so a
vector is rewritten about log_F(n / first segment size) times over a whole run, and a query
scans at most ``F - 1`` segments per tier. Readers map IVF segments from disk
(``faiss.IO_FLAG_MMAP``) and their ids files too, so an open costs neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from chextriev.files import atomic_open, atomic_path, sha256_file
from indexer.manifest import SEGMENTS, IndexStateError, new_name

#: Segments of one size tier merged together once this many exist. 4: a search scans a list in
#: every segment, and fewer, larger segments read faster (1M IVF-flat: 13 segments 25 % slower than
#: one); at most three per tier, 5 on average from 200k to 2M vectors (10: 9, up to 18), for each
#: vector written about log4 instead of log10 of (n / checkpoint) times (3.7 instead of 2.6 at 2M).
MERGE_FACTOR = 4
#: A merge builds its segment in memory (:func:`merge`): a group whose merged segment would hold
#: more than this many bytes of vectors is left as it is, so that indexing's memory stays bounded
#: at any archive size (IVF-flat at D = 1024: 1,048,576 vectors; the largest merge of a 1M build,
#: 819,200 vectors, is within it; without the bound the next one, 3.3M vectors, needs 13 GB).
MERGE_MAX_BYTES = 4 << 30
#: Segments below this many vectors are tier 0; tier t holds sizes [B F^(t-1), B F^t).
TIER_BASE = 1_024


def tier_of(n: int, factor: int = MERGE_FACTOR, base: int = TIER_BASE) -> int:
    if n < base:
        return 0
    return 1 + math.floor(math.log(n / base, factor) + 1e-9)


def _unreadable(what: str, error: Exception) -> IndexStateError:
    return IndexStateError(f"{what} is unreadable: {str(error).strip().splitlines()[-1]}")


class Segment:
    """One immutable Faiss index over a disjoint set of ids (files opened lazily)."""

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
        self.gpu = None  # a GPU copy, made by the first GPU search

    @property
    def saved(self) -> bool:
        return self.sha256 is not None

    def path(self, suffix: str = ".faiss") -> Path:
        return Path(self.root) / SEGMENTS / f"{self.name}{suffix}"

    @property
    def index(self):
        if self._index is None:
            try:
                self._index = faiss.read_index(str(self.path()),
                                               faiss.IO_FLAG_MMAP if self.mmap else 0)
            except RuntimeError as error:
                raise _unreadable(f"index segment {self.path()}", error) from error
        return self._index

    @property
    def ids(self) -> np.ndarray:
        """Sorted ids ``(n,)`` int64 (mapped from the ids file of a saved segment)."""
        if self._ids is None:
            try:
                self._ids = np.load(self.path(".ids.npy"), mmap_mode="r")
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

    def check(self) -> None:
        """Raise :class:`IndexStateError` when the files disagree with the manifest's count."""
        if self.index.ntotal != self.n or len(self.ids) != self.n:
            raise IndexStateError(
                f"index segment {self.name} is inconsistent: manifest {self.n} vectors, faiss "
                f"{self.index.ntotal}, ids file {len(self.ids)}")


class _Sink:
    """Faiss's writes into a Python file, keeping the first error (a full disk) to raise once
    Faiss is done: ``faiss.write_index(index, path)`` reports a failed close of its buffered
    file on stderr only, leaving a short file that a reader could load (and crash on)."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def __call__(self, data: bytes) -> int:
        if self.error is None:
            try:
                self.handle.write(data)
            except OSError as error:
                self.error = error
        return len(data)


def write_index_file(index, path: Path) -> None:
    """``index`` into ``path`` (temporary name, fsync, rename), every write error raised."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            sink = _Sink(handle)
            writer = faiss.PyCallbackIOWriter(sink)
            faiss.write_index(index, writer)
            del writer
            if sink.error is not None:
                raise sink.error

    atomic_path(path, write)


def write_segment(index_dir: Path, segment: Segment) -> None:
    """Write a new segment's files (temporary names, fsync, rename) and record their sha256."""
    segment.root = index_dir
    write_index_file(segment._index, segment.path())
    with atomic_open(segment.path(".ids.npy")) as handle:
        np.save(handle, np.asarray(segment.ids, np.int64))
    segment.sha256 = sha256_file(segment.path())
    segment.ids_sha256 = sha256_file(segment.path(".ids.npy"))


def write_trained(index_dir: Path, trained, info: dict) -> dict:
    """Write the empty trained IVF index shared by the segments; returns ``info`` with its
    ``name`` and ``sha256``."""
    info = dict(info)
    info["name"] = "trained-" + new_name()
    path = index_dir / SEGMENTS / f"{info['name']}.faiss"
    write_index_file(trained, path)
    info["sha256"] = sha256_file(path)
    return info


def read_trained(index_dir: Path, info: dict):
    path = Path(index_dir) / SEGMENTS / f"{info['name']}.faiss"
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        raise _unreadable(f"the trained index {path}", error) from error


# ---------------------------------------------------------------------- merge policy
def merge_plan(segments: list[Segment], factor: int = MERGE_FACTOR,
               max_vectors: int | None = None) -> list[list[Segment]]:
    """Groups of segments to merge: ``factor`` of one tier, smallest first, each holding at most
    ``max_vectors`` vectors in all (None: no bound)."""
    plan = []
    by_tier: dict[int, list[Segment]] = {}
    for segment in segments:
        by_tier.setdefault(tier_of(segment.n, factor), []).append(segment)
    for _tier, group in sorted(by_tier.items()):
        group = sorted(group, key=lambda s: s.n)
        while len(group) >= factor:
            if max_vectors is not None and sum(s.n for s in group[:factor]) > max_vectors:
                break  # sorted: the tier's other groups are larger still
            plan.append(group[:factor])
            group = group[factor:]
    return plan


def merge(group: list[Segment], empty: Callable[[], object], *, ivf: bool) -> Segment:
    """One in-memory segment holding every vector of ``group`` (``empty()``: a new empty index
    of the layout). IVF lists are concatenated (``merge_from``); flat segments' vectors are
    added to the new index (a flat read back from disk is an ``IndexFlatIP`` while a new one is
    an ``IndexFlat`` of the same metric, which ``merge_from`` refuses to merge)."""
    merged = empty()
    if ivf:
        for segment in group:
            source = segment.in_memory()
            merged.merge_from(source, 0)
            del source
    else:
        for segment in group:
            ids, vectors = payload(segment)
            merged.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                np.ascontiguousarray(ids, np.int64))
    ids = np.sort(np.concatenate([np.asarray(s.ids) for s in group]))
    if merged.ntotal != len(ids):
        raise IndexStateError(f"merging {len(group)} segments gave {merged.ntotal} vectors, "
                              f"their ids files list {len(ids)}")
    return Segment(new_name(), len(ids), index=merged, ids=ids, mmap=False)


# ---------------------------------------------------------------------- what is inside
def _id_map(index):
    """The ``IndexIDMap2`` of a flat segment, else None (IVF)."""
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap2) or hasattr(index, "id_map"):
        return faiss.downcast_index(index)
    return None


def payload(segment: Segment, wanted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` stored INSIDE one segment's Faiss structure (the payload, not the ids
    file), restricted to ``wanted`` ids when given. Used by ``verify``."""
    index = segment.index
    mapped = _id_map(index)
    if mapped is not None:
        ids = faiss.vector_to_array(mapped.id_map).astype(np.int64)
        rows = np.arange(len(ids)) if wanted is None else np.flatnonzero(np.isin(ids, wanted))
        flat = faiss.downcast_index(mapped.index)
        codes = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d) if flat.ntotal else \
            np.zeros(0, np.float32)
        return ids[rows], np.asarray(codes).reshape(-1, flat.d)[rows].astype(np.float32)
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


def payload_ids(segment: Segment) -> np.ndarray:
    """Ids inside one segment's Faiss structure, sorted (cheap: no vectors)."""
    mapped = _id_map(segment.index)
    if mapped is not None:
        return np.sort(faiss.vector_to_array(mapped.id_map).astype(np.int64))
    ivf = faiss.extract_index_ivf(segment.index)
    out = []
    for list_no in range(ivf.nlist):
        size = ivf.invlists.list_size(list_no)
        if size:
            out.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size).copy())
    return np.sort(np.concatenate(out).astype(np.int64)) if out else np.zeros(0, np.int64)
