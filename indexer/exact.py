"""Exact vectors for the index: an ``exact`` provider answers ``vectors(ids) -> (n, D)``
float32 (NaN rows for unknown ids). They serve the IVF-PQ re-rank, brute-force searches over
small allowed sets and :meth:`indexer.vector_index.VectorIndex.vectors`.

* :class:`StoreExact`: the catalog's vector store on disk (:mod:`indexer.vector_store`), by slot;
* :class:`ArrayExact`: an in-memory array (:meth:`VectorIndex.build`).

Rows are L2-normalised by THE rule of the retrieval core (:func:`unit_rows`, zero rows stay
zero).
"""

from __future__ import annotations

import numpy as np

from chextriev.retrieval import normalize_rows
from indexer.vector_store import StoreError, VectorStore

#: Rows read from the store at a time.
CHUNK = 50_000


def unit_rows(x) -> np.ndarray:
    """``(n, D)`` (or one ``(D,)`` row) as L2-normalised, C-contiguous float32 rows."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(normalize_rows(x.reshape(1, -1) if x.ndim == 1 else x))


def read_vectors(store: VectorStore, ids: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Embeddings of ``ids`` at ``slots`` ``(n, D)``; checks that each slot holds its id."""
    out = np.empty((len(ids), store.dim), np.float32)
    for start in range(0, len(ids), CHUNK):
        part = slots[start:start + CHUNK]
        keys = store.keys(part)
        wrong = keys != ids[start:start + CHUNK]
        if wrong.any():
            first = int(np.flatnonzero(wrong)[0])
            raise StoreError(f"vector store slot {int(part[first])} holds image "
                             f"{int(keys[first])}, the catalog says {int(ids[start + first])}")
        out[start:start + len(part)] = store.embeddings(part)
    return out


class StoreExact:
    """Exact vectors of the indexed images, read from the vector store by slot. ``ids`` must be
    sorted (with their ``slots`` in the same order): mapped column files are used as they are,
    nothing is copied."""

    def __init__(self, store: VectorStore, ids: np.ndarray, slots: np.ndarray):
        self.store = store
        self.ids = ids
        self.slots = slots

    def vectors(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.full((len(ids), self.store.dim), np.nan, np.float32)
        if len(self.ids) and len(ids):
            pos = np.clip(np.searchsorted(self.ids, ids), 0, len(self.ids) - 1)
            ok = self.ids[pos] == ids
            if ok.any():
                out[ok] = self.store.embeddings(self.slots[pos[ok]])
        return out


class ArrayExact:
    """In-memory exact vectors: sorted ``ids`` ``(n,)`` and their ``vectors`` ``(n, D)``."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, np.int64)[order]
        self.matrix = unit_rows(vectors)[order] if len(ids) else np.zeros(
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
                          np.concatenate([self.matrix, unit_rows(vectors)]))

    def drop(self, ids) -> ArrayExact:
        keep = ~np.isin(self.ids, np.asarray(ids, np.int64))
        return ArrayExact(self.ids[keep], self.matrix[keep])
