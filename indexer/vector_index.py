"""A thin Faiss wrapper: index types as factory strings, DB primary keys as ids, exact re-rank.

Index types (all inner product on L2-normalised vectors, i.e. cosine similarity):

* ``flat``      ``IDMap2,Flat``: exact search.
* ``ivf-flat``  ``IVF{nlist},Flat``: inverted lists of exact vectors; ``nprobe`` lists searched.
* ``ivf-pq``    ``IVF{nlist},PQ{m}x{nbits}``: compressed codes; the ``rerank`` x k best are
                re-scored with the exact vectors from the sidecar.
* ``auto``      ``flat`` below :data:`AUTO_FLAT_MAX` vectors, ``ivf-flat`` below
                :data:`AUTO_IVF_FLAT_MAX`, ``ivf-pq`` above.

Every build keeps a sidecar of exact vectors (``exact.npy``, float16 ``(n, D)``, rows aligned
with the sorted ``ids.npy``) used for the re-rank, for restricted searches over small allowed
sets (brute force, so filters never starve the top k) and for :meth:`VectorIndex.vectors`.

Saved layout (written atomically: a new build folder, then ``manifest.json`` replaced by
rename, which is the commit point; older builds are deleted afterwards)::

    index_dir/manifest.json
    index_dir/builds/<build_id>/index.faiss
    index_dir/builds/<build_id>/ids.npy
    index_dir/builds/<build_id>/exact.npy

GPU: when Faiss has GPUs (``faiss.get_num_gpus() > 0``) and ``device`` is ``cuda`` or ``auto``,
IVF training/adding and searching run on the GPU; the CPU index is always the saved master.
Otherwise one log line says why and the CPU is used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from chextriev.errors import ChextrievError, UnknownNameError

log = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf-flat", "ivf-pq")
AUTO_FLAT_MAX = 50_000
AUTO_IVF_FLAT_MAX = 2_000_000
MANIFEST = "manifest.json"


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


def factory_string(index_type: str, dim: int, n: int) -> str:
    """The Faiss factory string of a concrete ``index_type`` for ``n`` vectors of ``dim``."""
    if index_type == "flat":
        return "IDMap2,Flat"
    nlist = default_nlist(n)
    if index_type == "ivf-flat":
        return f"IVF{nlist},Flat"
    if index_type == "ivf-pq":
        m, nbits = _pq_params(dim, n)
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


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp-{secrets.token_hex(4)}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@dataclass
class Manifest:
    """What a saved build is: ties the index to a database state and a model checkpoint."""

    build_id: str
    created: str
    index_type: str
    factory: str
    dim: int
    n_vectors: int
    db_state: str
    checkpoint_id: str | None
    nprobe: int
    rerank: int
    build_dir: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def read(cls, index_dir: str | Path) -> Manifest:
        path = Path(index_dir) / MANIFEST
        if not path.is_file():
            raise IndexStateError(f"no index in {index_dir}: {MANIFEST} is missing (run `chextriev index`)")
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as error:
            raise IndexStateError(f"{path} is not a valid index manifest: {error}") from error


class VectorIndex:
    """Faiss index + sorted ids + exact float16 vectors. Ids are int64 database primary keys."""

    #: Restricted searches over at most this many allowed ids are exact brute force.
    BRUTE_FORCE_MAX = 50_000

    def __init__(self, index, index_type: str, factory: str, dim: int, ids: np.ndarray,
                 exact: np.ndarray, *, nprobe: int = 32, rerank: int = 8, device: str = "cpu"):
        self.index = index
        self.index_type = index_type
        self.factory = factory
        self.dim = int(dim)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.exact = exact
        self.nprobe = int(nprobe)
        self.rerank = int(rerank)
        self.device = device
        self._gpu_index = None
        self.manifest: Manifest | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, ids, vectors, *, index_type: str = "auto", device: str = "cpu",
              nprobe: int = 32, rerank: int = 8, factory: str | None = None) -> VectorIndex:
        """Build from ``ids`` ``(n,)`` int64 and ``vectors`` ``(n, D)`` (normalised here)."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = _normalise(vectors)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"ids {ids.shape} and vectors {vectors.shape} do not match")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        n, dim = vectors.shape
        concrete = resolve_index_type(index_type, n)
        if concrete != "flat" and n < 2:
            concrete = "flat"
        factory = factory or factory_string(concrete, dim, n)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index = cls._train(index, vectors, device)
        order = np.argsort(ids, kind="stable")
        self = cls(index, concrete, factory, dim, ids[order], vectors[order].astype(np.float16),
                   nprobe=nprobe, rerank=rerank, device=device)
        if n:
            self._faiss_add(vectors, ids)
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

    def _faiss_add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._gpu_index = None
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                np.ascontiguousarray(ids, dtype=np.int64))

    def add(self, ids, vectors) -> None:
        """Add new ``ids`` ``(n,)`` with ``vectors`` ``(n, D)``; ids already present raise."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        vectors = _normalise(vectors)
        if np.isin(ids, self.ids).any() or len(np.unique(ids)) != len(ids):
            raise ValueError("add: some ids are already in the index or repeated")
        self._faiss_add(vectors, ids)
        all_ids = np.concatenate([self.ids, ids])
        exact = np.concatenate([np.asarray(self.exact), vectors.astype(np.float16)])
        order = np.argsort(all_ids, kind="stable")
        self.ids, self.exact = all_ids[order], exact[order]

    def remove(self, ids) -> int:
        """Remove ``ids`` from the index and the sidecar; returns how many were present."""
        ids = np.asarray(ids, dtype=np.int64)
        present = np.isin(self.ids, ids)
        if not present.any():
            return 0
        self._gpu_index = None
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        keep = ~present
        self.ids, self.exact = self.ids[keep], np.asarray(self.exact)[keep]
        if removed != int(present.sum()):
            raise IndexStateError(f"Faiss removed {removed} vectors, the sidecar {int(present.sum())}")
        return removed

    # ------------------------------------------------------------------ reading
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def faiss_ids(self) -> np.ndarray:
        """The ids stored inside the Faiss structure itself (for verification), sorted."""
        if isinstance(self.index, faiss.IndexIDMap2) or hasattr(self.index, "id_map"):
            return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        ivf = faiss.extract_index_ivf(self.index)
        lists = ivf.invlists
        out = []
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                out.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
        return np.sort(np.concatenate(out).astype(np.int64)) if out else np.zeros(0, np.int64)

    def rows(self, ids) -> np.ndarray:
        """Sidecar row of each id ``(n,)``; -1 where the id is not in the index."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        found = (len(self.ids) > 0) & (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def vectors(self, ids) -> np.ndarray:
        """Exact vectors ``(n, D)`` float32 (NaN rows for unknown ids)."""
        rows = self.rows(ids)
        out = np.full((len(rows), self.dim), np.nan, dtype=np.float32)
        ok = rows >= 0
        if ok.any():
            out[ok] = np.asarray(self.exact[rows[ok]], dtype=np.float32)
        return out

    def _search_index(self):
        if self._gpu_index is None and gpu_available(self.device) and self.ntotal:
            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
            except Exception as error:  # noqa: BLE001
                log.info("cannot move the index to the GPU (%s): searching on the CPU", error)
                self.device = "cpu"
        return self._gpu_index if self._gpu_index is not None else self.index

    def search(self, queries, k: int, *, allowed_ids=None, nprobe: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product. ``queries`` ``(n, D)``; returns ``(scores, ids)``, each
        ``(n, k)``, best first, id -1 / score -inf where fewer than k exist.

        ``allowed_ids``: restrict to these ids (brute force on the exact sidecar when the set is
        small, a Faiss ID selector otherwise).
        """
        queries = _normalise(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        n = len(queries)
        if k <= 0 or self.ntotal == 0:
            return np.full((n, max(k, 0)), -np.inf, np.float32), np.full((n, max(k, 0)), -1, np.int64)
        if allowed_ids is not None:
            allowed = np.asarray(allowed_ids, dtype=np.int64)
            rows = self.rows(allowed)
            rows = np.sort(rows[rows >= 0])
            if len(rows) <= self.BRUTE_FORCE_MAX or len(rows) <= k:
                return self._brute_force(queries, k, rows)
            selector = faiss.IDSelectorBatch(self.ids[rows])
        else:
            selector = None
        nprobe = int(nprobe or self.nprobe)
        fetch = k * self.rerank if self.index_type == "ivf-pq" else k
        fetch = min(fetch, self.ntotal)
        index = self._search_index()
        if self.index_type == "flat":
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector is not None \
                else faiss.SearchParametersIVF(nprobe=nprobe)
        if params is not None and index is not self.index:
            # GPU indexes take nprobe as an attribute and no selector; search the CPU master.
            index = self.index
        scores, ids = index.search(queries, fetch, params=params)
        if self.index_type == "ivf-pq":
            scores, ids = self._rerank(queries, ids)
        return _pad(scores[:, :k], ids[:, :k], k)

    def _rerank(self, queries: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows(cand.reshape(-1)).reshape(cand.shape)
        valid = (cand >= 0) & (rows >= 0)
        safe_rows = np.where(valid, rows, 0)
        exact = np.asarray(self.exact[safe_rows.reshape(-1)], dtype=np.float32).reshape(
            *cand.shape, self.dim)
        scores = np.einsum("nd,nkd->nk", queries, exact)
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.where(np.isfinite(scores), np.take_along_axis(cand, order, axis=1), -1)
        return scores.astype(np.float32), ids

    def _brute_force(self, queries: np.ndarray, k: int, rows: np.ndarray):
        if not len(rows):
            n = len(queries)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        vectors = np.asarray(self.exact[rows], dtype=np.float32)
        scores = queries @ vectors.T
        kk = min(k, len(rows))
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        return _pad(np.take_along_axis(top_scores, order, axis=1), self.ids[rows][top], k)

    # ------------------------------------------------------------------ persistence
    def save(self, index_dir: str | Path, *, db_state: str, checkpoint_id: str | None) -> Manifest:
        """Save atomically into ``index_dir`` and return the new manifest (the commit point)."""
        index_dir = Path(index_dir)
        builds = index_dir / "builds"
        builds.mkdir(parents=True, exist_ok=True)
        build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        build_dir = builds / build_id
        build_dir.mkdir()
        index_bytes = faiss.serialize_index(self.index)
        _fsync_write(build_dir / "index.faiss", lambda h: h.write(index_bytes.tobytes()))
        _fsync_write(build_dir / "ids.npy", lambda h: np.save(h, self.ids))
        _fsync_write(build_dir / "exact.npy",
                     lambda h: np.save(h, np.asarray(self.exact, dtype=np.float16)))
        _fsync_dir(build_dir)
        manifest = Manifest(
            build_id=build_id, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            index_type=self.index_type, factory=self.factory, dim=self.dim,
            n_vectors=self.ntotal, db_state=db_state, checkpoint_id=checkpoint_id,
            nprobe=self.nprobe, rerank=self.rerank, build_dir=f"builds/{build_id}",
        )
        _fsync_write(index_dir / MANIFEST, lambda h: h.write(manifest.to_json().encode()))
        _fsync_dir(index_dir)
        for old in builds.iterdir():
            if old.name != build_id:
                shutil.rmtree(old, ignore_errors=True)
        self.manifest = manifest
        return manifest

    @classmethod
    def load(cls, index_dir: str | Path, *, device: str = "cpu", mmap: bool = True) -> VectorIndex:
        """Load the build named by ``index_dir/manifest.json``."""
        manifest = Manifest.read(index_dir)
        build_dir = Path(index_dir) / manifest.build_dir
        try:
            index = faiss.read_index(str(build_dir / "index.faiss"))
            ids = np.load(build_dir / "ids.npy")
            exact = np.load(build_dir / "exact.npy", mmap_mode="r" if mmap else None)
        except (OSError, RuntimeError, ValueError) as error:
            raise IndexStateError(f"index build {build_dir} is unreadable: {error}") from error
        if index.ntotal != manifest.n_vectors or len(ids) != index.ntotal or len(exact) != len(ids):
            raise IndexStateError(
                f"index build {build_dir} is inconsistent: manifest {manifest.n_vectors} vectors, "
                f"faiss {index.ntotal}, ids {len(ids)}, exact {len(exact)}"
            )
        self = cls(index, manifest.index_type, manifest.factory, manifest.dim, ids, exact,
                   nprobe=manifest.nprobe, rerank=manifest.rerank, device=device)
        self.manifest = manifest
        return self


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(scores)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    kk = min(k, scores.shape[1])
    out_s[:, :kk] = scores[:, :kk]
    out_i[:, :kk] = ids[:, :kk]
    out_s[out_i < 0] = -np.inf
    return out_s, out_i
